"""The engine contract: what every inference engine (ONNX Runtime, LiteRT, TensorRT, ...) implements.

In the spirit of Polygraphy's `BaseRunner` and NNCF's per-backend classes: the stages know only this
contract, and the registry (`pipeline.backends.get(name)`) hands them the engine a target names. An
engine says

- what its INT8 artifact is (`int8_file`) and how to quantize to it (`quantizer`: the build, the
  artifact's held-out outputs, a cheap proxy for per-layer sensitivity);
- how to compile/convert it into deliverables (`compile`);
- how to load a `Runner` on this machine (`prepare` / `run_raw` / `run`, input/output metadata,
  layout) and, where its artifact cannot run here, which engine runs its host proxy (`host_runtime`);
- the golden-sample tolerances of its hand-off bundle, its device toolchain, its notes for the report
  and the bundle, and the install hint when it is missing;
- how `bench` measures its deliverable on the device (`bench`).

`tests/backends/test_contract.py` runs the same conformance checks against every registered engine,
including the parts of TensorRT that need a GPU, which are checked by signature without TensorRT.
"""
from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional, Sequence

import numpy as np


class Runner(ABC):
    """One artifact loaded for inference on this machine.

    `run(x)` takes normalized float32 NCHW input (any batch) and returns float32 outputs; `prepare(x)`
    turns the first sample(s) of x into exactly what one inference consumes, and `run_raw(prepared)`
    runs that one inference with no checks (for timing loops)."""

    layout: str = "NCHW"        # the layout the artifact's input takes on the device
    input_name: str
    input_shape: tuple          # the input's shape in NCHW terms; None for a dynamic dim

    @abstractmethod
    def __init__(self, path: Path, threads: int = 2):
        ...

    @abstractmethod
    def prepare(self, x: np.ndarray) -> Any:
        ...

    @abstractmethod
    def run_raw(self, x: Any) -> np.ndarray:
        ...

    @abstractmethod
    def run(self, x: np.ndarray) -> np.ndarray:
        ...

    def io(self) -> dict:
        """Input/output metadata: {"inputs": [{name, shape, dtype, layout}], "outputs": [...]}."""
        return {"inputs": [{"name": self.input_name, "shape": list(self.input_shape), "dtype": "float32",
                            "layout": self.layout}],
                "outputs": [{"name": getattr(self, "output_name", "output"), "dtype": "float32"}]}


@dataclass(frozen=True)
class Quantizer:
    """What sensitivity and fallback need from an engine, for one model and one held-out slice.

    layers: the quantizable layer names; reference: the float model's held-out outputs; build:
    quantize with these layers in float into the stage's output file, returning the engine's meta;
    logits: an artifact's held-out outputs; proxy: held-out outputs of a throw-away INT8 model with
    these float layers (for the ranking); proxy_note: what the proxy is; prepared: what
    pipeline/compress/dfq.py did to the float model before quantizing (None when nothing)."""

    layers: list[str]
    reference: np.ndarray
    build: Callable[[Sequence[str]], dict]
    logits: Callable[[Path], np.ndarray]
    proxy: Callable[[Sequence[str]], np.ndarray]
    proxy_note: str
    prepared: Optional[dict] = None
    output_layers: list[str] = field(default_factory=list)   # the weighted layers feeding the outputs (engine names)


@dataclass
class QuantizeJob:
    """Everything an engine's quantizer is given by the quantize stage."""

    target: Any                      # config.Target
    dest: Path                       # the INT8 artifact to write (its name is the engine's int8_file)
    tmp: Path                        # scratch folder inside the run folder
    calib: np.ndarray                # normalized calibration inputs
    held_x: np.ndarray               # normalized held-out inputs for the accuracy checks
    method: str                      # calibration method
    per_channel: bool
    onnx_source: Path                # the float ONNX the source stage wrote
    source: Any                      # the float torch model (None for ONNX models / when not loaded)
    to_quantize: Any                 # the torch model to quantize: `source`, or its dfq-transformed copy
    example: Any                     # a torch tensor of one normalized input
    model_name: str                  # for messages
    dynamic_batch: bool = False
    prepared: Optional[dict] = None  # what dfq did (None: nothing)
    isa_aware: bool = True           # quantize.isa_aware: INT8 settings follow the target's [device] isa
    dynamic: Any = None              # the run's dynamic axes (pipeline/data/shapes.Dynamic)


@dataclass
class CompileJob:
    """Everything an engine's compile step is given by the compile stage."""

    target: Any
    stage: str                           # the stage's name, for log lines
    out: Path                            # the stage's output folder
    int8: Path                           # the quantize stage's INT8 artifact
    float_onnx: Path                     # the source stage's float ONNX
    torch_model: Callable[[], Any]       # loads the source stage's torch model
    example: Any                         # a torch tensor of one normalized input
    input_shape: list[int]
    choose: Callable[[Any, dict[str, str]], tuple[str, dict]]   # (engine, {precision: file}) -> choice, measured
    input_shapes: dict = field(default_factory=dict)             # {input: (1, ...)} from the data
    dynamic: Any = None                                          # the run's dynamic axes (data/shapes.Dynamic)
    nms: Optional[dict] = None      # a detector asking for in-graph NMS: {layout, conf, iou, max_det}


@dataclass
class Tolerance:
    """How a device's outputs for the golden samples are compared with the build host's."""

    max_abs: float
    min_argmax_agreement: float
    why: str

    def as_dict(self) -> dict:
        return {"max_abs": self.max_abs, "min_argmax_agreement": self.min_argmax_agreement, "why": self.why}


class Engine(ABC):
    """One inference engine. Subclasses set the class attributes and implement the abstract methods."""

    name: ClassVar[str]
    install_hint: ClassVar[str]
    int8_file: ClassVar[str]                 # file name of the quantize stage's INT8 artifact
    Runner: ClassVar[type]                   # a pipeline.backends.base.Runner subclass
    # Which engine runs this engine's artifacts on a build host (TensorRT: ONNX Runtime runs the QDQ ONNX).
    host_runtime: ClassVar[str] = ""
    quantizes_torch: ClassVar[bool] = False  # quantizes a torch model (else the float ONNX)
    precisions: ClassVar[tuple[str, ...]] = ("int8", "fp32", "auto")
    runtime_packages: ClassVar[tuple[str, ...]] = ()   # pip packages whose version a device report records

    # ------------------------------------------------------------ availability
    @classmethod
    @abstractmethod
    def available(cls) -> tuple[bool, str]:
        """(True, what was found) when the engine can run here, else (False, why not)."""

    @classmethod
    def runs_here(cls) -> bool:
        return cls.available()[0]

    # ------------------------------------------------------------ per-target rules
    def complete_target(self, target: Any) -> None:
        """Fill in this engine's defaults on a target profile that was just read (e.g. its options table)."""

    def check_target(self, target: Any, quantize_cfg: Any) -> None:
        """Raise a UserError when the target or the quantize settings ask for what this engine cannot do."""

    def dynamic_batch(self, target: Any) -> bool:
        """Whether this target's INT8 artifact needs a dynamic batch dim."""
        return False

    def float_precision(self, target: Any) -> str:
        """The precision layers kept out of INT8 run in."""
        return "fp32"

    # ------------------------------------------------------------ quantize / compile
    @abstractmethod
    def quantizer(self, job: QuantizeJob) -> Quantizer:
        """The build / logits / proxy functions the quantize stage drives (see Quantizer)."""

    @abstractmethod
    def compile(self, job: CompileJob) -> dict:
        """Write the deliverables into job.out; return the stage's metrics: "deliverables" (files shipped),
        "artifacts" (rows the evaluate stage measures: name, file, backend, precision, target, runs_here)
        and engine facts ("engine": {"status": ...} when the deliverable is built elsewhere)."""

    # ------------------------------------------------------------ hand-off, report, device
    def golden_tolerance(self, target: Any, output_meta: dict) -> Tolerance:
        """Tolerances of the bundle's golden check: twice the INT8 output step when the output is int8."""
        scale = output_meta.get("scale") if output_meta.get("dtype") == "int8" else None
        return Tolerance(float(2 * scale) if scale else 1e-3, 1.0,
                         "same engine on the device; small kernel differences across CPUs")

    def device_toolchain(self, target: Any) -> Optional[dict]:
        """The device-side toolchain the bundle was prepared for (None: any version of the runtime)."""
        return None

    def bundle_notes(self, target: Any, compile_metrics: dict) -> str:
        """Extra README text for this engine's bundle."""
        return ""

    def report_notes(self, target: Any, compile_metrics: dict, deliverable: Optional[dict]) -> list[str]:
        """Engine-specific notes for the report's target entry."""
        return []

    def check_bundle_engine(self, tdir: Path, manifest: dict) -> Optional[str]:
        """verify: the status of an on-device engine file in the bundle, or None when there is none."""
        return None

    @abstractmethod
    def bench(self, tdir: Path, manifest: dict, warmup: int, runs: int, threads: int) -> dict:
        """On the device: check the deliverable against the golden samples, time it, return a device report."""


def choice_metrics(engine: Engine, target: Any, kind: str, candidates: dict[str, str], choice: str,
                   measured: dict) -> dict:
    """Compile metrics of an engine that ships one of an INT8 and an FP32 file (the `choice`), both measured
    here: `kind` names the format in the rows ("ONNX", "TFLite")."""
    common = {"backend": engine.name, "target": target.name, "threads": target.threads}
    return {"backend": engine.name, "precision": choice, "selection": measured, "deliverables": [candidates[choice]],
            "artifacts": [{**common, "name": f"{target.name}: {prec.upper()} {kind}", "file": f, "precision": prec,
                           "selected": choice == prec} for prec, f in candidates.items()]}


def conformance_problems(engine_cls: type) -> list[str]:
    """What an engine class lacks against this contract (empty when it conforms): abstract methods left
    unimplemented, a Runner that is not a base.Runner or leaves methods abstract, signatures that differ
    from the contract's, class attributes left unset. Checked without importing the engine's runtime."""
    problems = []
    if not (isinstance(engine_cls, type) and issubclass(engine_cls, Engine)):
        return [f"{engine_cls!r} is not a pipeline.backends.base.Engine subclass"]
    left = sorted(getattr(engine_cls, "__abstractmethods__", ()))
    if left:
        problems.append(f"{engine_cls.__name__} leaves abstract: {', '.join(left)}")
    for attr in ("name", "install_hint", "int8_file", "Runner", "host_runtime"):
        if not getattr(engine_cls, attr, None):
            problems.append(f"{engine_cls.__name__}.{attr} is not set")
    for meth in ("complete_target", "quantizer", "compile", "golden_tolerance", "device_toolchain", "bundle_notes", "report_notes",
                 "check_bundle_engine", "bench", "check_target", "dynamic_batch", "float_precision"):
        want = [p.name for p in inspect.signature(getattr(Engine, meth)).parameters.values()]
        got = [p.name for p in inspect.signature(getattr(engine_cls, meth)).parameters.values()]
        if want != got:
            problems.append(f"{engine_cls.__name__}.{meth}{tuple(got)} differs from the contract's {tuple(want)}")
    runner = getattr(engine_cls, "Runner", None)
    if not (isinstance(runner, type) and issubclass(runner, Runner)):
        problems.append(f"{engine_cls.__name__}.Runner is not a pipeline.backends.base.Runner subclass")
        return problems
    left = sorted(getattr(runner, "__abstractmethods__", ()))
    if left:
        problems.append(f"{engine_cls.__name__}.Runner leaves abstract: {', '.join(left)}")
    for meth in ("__init__", "prepare", "run_raw", "run", "io"):
        want = [p.name for p in inspect.signature(getattr(Runner, meth)).parameters.values()]
        got = [p.name for p in inspect.signature(getattr(runner, meth)).parameters.values()]
        if got[:len(want)] != want or any(p.default is inspect.Parameter.empty
                                          for p in list(inspect.signature(getattr(runner, meth)).parameters.values())[len(want):]):
            problems.append(f"{engine_cls.__name__}.Runner.{meth}{tuple(got)} differs from the contract's {tuple(want)}")
    return problems
