"""TFLite / LiteRT backend: convert with litert-torch, quantize with its PT2E quantizer, run with LiteRT.

Layout. litert-torch keeps the torch model's NCHW input and inserts NCHW->NHWC transposes inside the
graph (TFLite kernels are NHWC). By default we convert with an NHWC input instead (`layout="NHWC"`):
the wrapper's permute cancels the converter's input transpose, so the .tflite starts directly with its
first conv (a TRANSPOSE remains only where the model flattens activations in NCHW order), the input is
what camera/bitmap code on a phone produces (HWC), and an INT8 model keeps an int8 input (a permute
shares its input's quantization). `layout="NCHW"` keeps the torch layout. The layout
is written into the .tflite as a metadata entry (`edge_compress`), which `Runner` reads.

INT8. PT2E flow: torch.export (dynamic batch, so calibration runs in batches) -> prepare_pt2e with
litert-torch's `PT2EQuantizer` (int8 per-channel symmetric weights, int8 per-tensor affine
activations) -> calibrate -> convert_pt2e -> litert-torch conversion in STATIC QDQ mode. The converter
always folds the boundary quantize/dequantize into int8 model I/O; for `io_dtype="float32"` a
QUANTIZE op is put back in front of the input and a DEQUANTIZE op after the output.

Files are deterministic: the same model, example and calibration data give the same bytes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from pipeline.data.inputs import Inputs
from pipeline.errors import UserError
from pipeline.hashing import sha256_file

log = logging.getLogger("pipeline")

LAYOUTS = ("NHWC", "NCHW")
IO_DTYPES = ("int8", "float32")
METHODS = ("minmax", "percentile", "entropy")
PERCENTILE = 99.99  # the `percentile` method clips activations to [100 - P, P] percentiles
CALIB_BATCH = 64
METADATA_NAME = "edge_compress"  # metadata entry of our .tflite files: JSON with the input layout
INSTALL_FIX = "pip install -r requirements.txt (ai-edge-litert, litert-torch)"
_ACT_EPS = 2 ** -12  # the smallest activation scale litert-torch's own config allows


def convert_float(model: torch.nn.Module, example, out_path: Path, layout: str = "NHWC") -> dict:
    """Write an FP32 .tflite of `model` (switched to eval mode) traced at `example` (one normalized sample:
    Inputs or an NCHW tensor); returns its meta."""
    litert_torch = _import_litert_torch()
    t0 = time.perf_counter()
    example = _check_example(example)
    layout = _layout_for(example, _check_choice("layout", layout, LAYOUTS))
    module, args = _with_layout(model, example, layout)
    log.info("[tflite] converting to FP32 %s with litert-torch (%s input)", Path(out_path).name, layout)
    with _conversion_errors():
        content = litert_torch.convert(module, args).model_content()
    _write(content, Path(out_path), layout, float_io=False)
    meta = {"precision": "fp32", "io_dtype": "float32", "layout": layout, **_int_note(example)}
    return meta | _describe(Path(out_path)) | {"convert_s": round(time.perf_counter() - t0, 2)}


def convert_int8(model: torch.nn.Module, example, calib, out_path: Path,
                 io_dtype: str = "int8", method: str = "minmax", float_layers: Sequence[str] = (),
                 layout: str = "NHWC", per_channel: bool = True) -> dict:
    """Write a full-integer INT8 .tflite of `model` (switched to eval mode), calibrated on `calib`.

    `calib`: normalized inputs shaped like `example` (Inputs, or one NCHW array), fed CALIB_BATCH at a
    time; integer inputs (token ids, masks) become int32 model inputs and are never quantized.
    `io_dtype`: "int8" (quantized model input/output, what a phone wants) or "float32" (float I/O,
    QUANTIZE/DEQUANTIZE ops inside). `method` picks the activation observer (minmax | percentile |
    entropy; meta["method_note"] says what was used); weights are symmetric int8 from their min/max,
    per output channel (or per tensor with `per_channel=False`, for delegates that need it).
    `float_layers`: names from `model.named_modules()` whose ops stay float (a float layer at the
    model's input or output makes that tensor float whatever `io_dtype` says; meta records the real
    I/O dtypes). Returns the meta of the written file.
    """
    litert_torch = _import_litert_torch()
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    t0 = time.perf_counter()
    example = _check_example(example)
    _check_choice("io_dtype", io_dtype, IO_DTYPES)
    _check_choice("method", method, METHODS)
    _check_choice("layout", layout, LAYOUTS)
    calib = _check_calib(calib, example)
    layout = _layout_for(example, layout)
    float_layers = list(float_layers)
    from pipeline.compress.output_tail import OUTPUT_TAIL
    unknown = sorted(set(float_layers) - {name for name, _ in model.named_modules() if name} - {OUTPUT_TAIL})
    if unknown:
        raise UserError(f"float_layers names modules the model does not have: {', '.join(unknown)}",
                        "use names from model.named_modules(), e.g. 'fc' or 'layers.3.conv2'")

    module, args = _with_layout(model, example, layout)
    prefix = "model."  # module paths inside our input wrapper
    quantizer, method_note = _quantizer(method, [prefix + name for name in float_layers if name != OUTPUT_TAIL],
                                        per_channel, float_tail=OUTPUT_TAIL in float_layers)
    with _conversion_errors():
        log.info("[tflite] INT8 %s: torch.export, then calibrating %s observers on %d samples", Path(out_path).name,
                 method, len(calib))
        graph, batch = _export_for_calibration(module, args)
        prepared = prepare_pt2e(graph, quantizer)
        with torch.no_grad():
            for i in range(0, len(calib), batch):
                prepared(*_module_args(calib[i:i + batch], layout))
        converted = convert_pt2e(prepared, fold_quantize=False)
        log.info("[tflite] converting the calibrated graph with litert-torch (%d layers kept float)", len(float_layers))
        # Exported from an eval-mode model already; exported GraphModules refuse .eval(), and the flag
        # only silences litert-torch's "converted in training mode" warning.
        converted.training = False
        edge_model = litert_torch.convert(converted, args, quant_config=QuantConfig(pt2e_quantizer=quantizer))
        content = edge_model.model_content()
    # Embedding tables go int8 per row after conversion (embedding.py) unless fallback keeps one float.
    float_tables = [n for n in float_layers if isinstance(model.get_submodule(n), torch.nn.Embedding)]
    tables = _write(content, Path(out_path), layout, float_io=io_dtype == "float32", int8_tables=not float_tables)
    meta = {**_int_note(example),
        "precision": "int8", "io_dtype": io_dtype, "layout": layout, "method": method,
        "method_note": method_note,
        "weights": "int8 per-channel symmetric (PerChannelMinMaxObserver, quant range -127..127)" if per_channel
                   else "int8 per-tensor symmetric (MinMaxObserver, quant range -127..127)",
        "per_channel": per_channel,
        "activations": "int8 per-tensor affine",
        "calibration": {"samples": int(len(calib)), "batch": batch},
        "float_layers": float_layers,
        "embedding_tables": {"int8": tables, "note": (
            f"kept float32: {', '.join(float_tables)} in float_layers" if float_tables else
            "int8 per row (hybrid EMBEDDING_LOOKUP v4: dequantized in the lookup, float32 output)")} if tables or float_tables else None,
    }
    return meta | _describe(Path(out_path)) | {"convert_s": round(time.perf_counter() - t0, 2)}


# --- conversion helpers ---------------------------------------------------------------------------

def _import_litert_torch() -> Any:
    try:
        import litert_torch
    except ImportError as e:
        raise UserError(f"converting to TFLite needs litert-torch, which does not import here ({e})", INSTALL_FIX) from None
    return litert_torch


@contextlib.contextmanager
def _conversion_errors() -> Iterator[None]:
    """A model that torch.export or litert-torch cannot handle is a user error: one line, cause chained."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 -- export/lowering raise many types; all mean "this model does not convert"
        first_line = next(iter(str(e).strip().splitlines()), "")
        raise UserError(f"TFLite conversion failed: {type(e).__name__}: {first_line}",
                        "make the model torch.export-able at a fixed input shape with LiteRT-supported ops "
                        "(the full error is chained to this one)") from e


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise UserError(f"unknown TFLite {what} '{value}'", f"use one of {', '.join(choices)}")
    return value



def _check_example(example) -> Inputs:
    """One normalized sample as Inputs (an NCHW float tensor is a single image input)."""
    if isinstance(example, torch.Tensor):
        if example.ndim != 4 or not example.is_floating_point():
            raise UserError(f"the TFLite converter needs a float NCHW example input, got {tuple(example.shape)}",
                            "pass a (1, C, H, W) float32 tensor, or Inputs for a model with named inputs")
        return Inputs.of(example[:1].detach().float().contiguous().numpy())
    if not isinstance(example, Inputs):
        raise UserError(f"the TFLite converter got an example of type {type(example).__name__}",
                        "pass normalized Inputs (or an NCHW tensor)")
    return example[:1]


def _check_calib(calib, example: Inputs) -> Inputs:
    calib = Inputs.of(calib) if not isinstance(calib, Inputs) else calib
    if len(calib.names) == 1 and len(example.names) == 1:
        calib = Inputs({example.names[0]: calib.single}, example.positional)
    if calib.names != example.names:
        raise UserError(f"calibration inputs {calib.names} differ from the model's {example.names}",
                        "calibrate with one array per model input")
    for k in example:
        c, e = calib[k], example[k]
        if c.shape[1:] != e.shape[1:] or len(c) == 0:
            raise UserError(f"calibration set '{k}' has shape {c.shape}, the model takes (N, {', '.join(map(str, e.shape[1:]))})",
                            "pass at least one normalized sample of the model's input size")
        if e.dtype.kind == "f" and c.dtype.kind != "f":
            raise UserError(f"calibration inputs '{k}' are {c.dtype}, not normalized float",
                            "normalize them first (Dataset.normalize) so they match what the model sees")
        if c.dtype.kind == "f" and not np.isfinite(c).all():
            raise UserError("calibration images contain NaN or inf", "check the calibration set and its normalization")
    return calib


def _layout_for(example: Inputs, layout: str) -> str:
    """NHWC only for a model whose one input is a float image; anything else keeps the model's layout."""
    single = len(example.names) == 1 and example.single.ndim == 4 and example.single.dtype.kind == "f"
    return layout if single else "NCHW"


def _int_note(example: Inputs) -> dict:
    ints = [k for k in example if example[k].dtype.kind in "iu"]
    return {"int_inputs": {k: "int32 (int64 in torch; cast inside the model)" for k in ints}} if ints else {}


class _Inputs32(torch.nn.Module):
    """Takes NHWC images (layout NHWC) and int32 ids; hands the wrapped model NCHW images and int64 ids."""

    def __init__(self, model: torch.nn.Module, nhwc: bool, ints: tuple[bool, ...]):
        super().__init__()
        self.model, self.nhwc, self.ints = model, nhwc, ints

    def forward(self, *x: torch.Tensor) -> torch.Tensor:
        args = [a.long() if is_int else a for a, is_int in zip(x, self.ints)]
        if self.nhwc:
            args[0] = args[0].permute(0, 3, 1, 2)
        return self.model(*args)


def _module_args(x: Inputs, layout: str) -> tuple:
    """Model-side tensors of Inputs as the converted module takes them (NHWC image, int32 ids)."""
    args = []
    for a in x.values():
        if a.dtype.kind in "iu":
            args.append(torch.from_numpy(np.ascontiguousarray(a, dtype=np.int32)))
        else:
            t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
            args.append(t.permute(0, 2, 3, 1).contiguous() if layout == "NHWC" else t)
    return tuple(args)


def _with_layout(model: torch.nn.Module, example: Inputs, layout: str) -> tuple[torch.nn.Module, tuple]:
    """The module to convert and its example arguments, for the requested .tflite input layout."""
    model.eval()
    ints = tuple(a.dtype.kind in "iu" for a in example.values())
    # Always wrapped: the model's own modules then sit under "model." (a top-level module named like a
    # GraphModule attribute, e.g. `meta`, would otherwise break the PT2E re-export).
    return _Inputs32(model, layout == "NHWC", ints).eval(), _module_args(example, layout)


def _export_for_calibration(module: torch.nn.Module, args: tuple) -> tuple[torch.fx.GraphModule, int]:
    """torch.export with a dynamic batch, so calibration runs CALIB_BATCH images per call.

    A model whose code pins the batch size cannot be exported that way; it is exported at batch 1 and
    calibrated one image at a time (same result, slower). The conversion itself re-traces at batch 1.
    """
    try:
        batch = torch.export.Dim("batch", min=1)
        program = torch.export.export(module, tuple(torch.cat([a, a]) for a in args),
                                      dynamic_shapes=(tuple({0: batch} for _ in args),))   # forward(*x)
        return program.module(), CALIB_BATCH
    except Exception:  # noqa: BLE001 -- torch raises several types for a batch it had to specialize
        return torch.export.export(module, args).module(), 1


def _quantizer(method: str, float_paths: list[str], per_channel: bool = True,
               float_tail: bool = False) -> tuple[Any, str]:
    """litert-torch's PT2EQuantizer with our activation observer, leaving `float_paths` unannotated (and,
    with `float_tail`, every op after the last weighted layers: pipeline/compress/output_tail.py).

    `PT2EQuantizer.set_module_name` cannot express "keep float" (it asserts a config) and its module
    filter does not match torch 2.13's nn_module_stack keys, so module selection is done here.
    """
    from litert_torch.quantize import pt2e_quantizer as pq
    from litert_torch.quantize.pt2e_quantizer_utils import OP_TO_ANNOTATOR, propagate_annotation

    observer, note = _activation_observer(method)
    base = pq.get_symmetric_quantization_config(is_per_channel=per_channel)
    act = dataclasses.replace(base.input_activation, observer_or_fake_quant_ctr=observer.with_args(eps=_ACT_EPS))
    config = dataclasses.replace(base, input_activation=act, output_activation=act)

    tail: set = set()

    def quantize_node(node: torch.fx.Node) -> bool:
        if node in tail:
            return False
        paths = [path for path, _ in node.meta.get("nn_module_stack", {}).values()]
        return not any(p == f or p.startswith(f + ".") for p in paths for f in float_paths)

    class Quantizer(pq.PT2EQuantizer):
        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            if float_tail:
                from pipeline.compress.output_tail import fx_tail
                tail.clear()
                tail.update(fx_tail(model.graph)[0])
            for op in self.STATIC_OPS:
                OP_TO_ANNOTATOR[op](model, self.global_config, quantize_node)
            propagate_annotation(model)
            return model

    return Quantizer().set_global(config), note


def _activation_observer(method: str) -> tuple[type, str]:
    """The torchao observer class for activations, and a note on how it maps to `method`."""
    from torchao.quantization.pt2e.observer import HistogramObserver, MinMaxObserver

    if method == "minmax":
        return MinMaxObserver, "activations: min/max over the calibration set (MinMaxObserver)"
    if method == "entropy":
        return HistogramObserver, (
            "the PT2E quantizer offers no KL-divergence (entropy) observer; used the closest, HistogramObserver, "
            "which picks the clipping range that minimizes the L2 quantization error on a 2048-bin histogram")

    class PercentileObserver(HistogramObserver):
        """HistogramObserver that clips to the [100 - PERCENTILE, PERCENTILE] percentiles of its histogram."""

        def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
            if torch.isinf(self.min_val):  # never observed: the base class warns and returns defaults
                return super().calculate_qparams()
            cdf = torch.cumsum(self.histogram, 0) / self.histogram.sum()
            width = (self.max_val - self.min_val) / self.bins
            q = torch.tensor([1 - PERCENTILE / 100, PERCENTILE / 100], dtype=cdf.dtype)
            lo_bin, hi_bin = torch.searchsorted(cdf, q).clamp(max=self.bins - 1)
            return self._calculate_qparams(self.min_val + width * lo_bin, self.min_val + width * (hi_bin + 1))

    return PercentileObserver, (
        f"the PT2E quantizer offers no percentile observer; used a HistogramObserver subclass that clips "
        f"activations to their {100 - PERCENTILE:g}/{PERCENTILE:g} percentiles over the calibration set")


def _write(content: bytes, out_path: Path, layout: str, float_io: bool, int8_tables: bool = False) -> list[dict]:
    """Add our metadata entry (and float I/O, int8 embedding tables if asked) to the converter's flatbuffer
    and write it; returns the tables made int8."""
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils

    from pipeline.backends.tflite.embedding import int8_embedding_tables

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    tables = int8_embedding_tables(model) if int8_tables else []
    if float_io:
        _add_float_io(model)
    buffer = fb.BufferT()
    buffer.data = np.frombuffer(json.dumps({"layout": layout}).encode(), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = fb.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    return tables


def _add_float_io(model: Any) -> None:
    """Give each int8 input/output of the main subgraph a float32 twin joined by QUANTIZE / DEQUANTIZE."""
    from ai_edge_litert import schema_py_generated as fb

    graph = model.subgraphs[0]

    # op versions as the converter writes them: QUANTIZE float->int8 is v1, DEQUANTIZE int8->float v2
    versions = {fb.BuiltinOperator.QUANTIZE: 1, fb.BuiltinOperator.DEQUANTIZE: 2}

    def opcode_index(code: int) -> int:
        for i, op in enumerate(model.operatorCodes):
            if max(op.builtinCode, op.deprecatedBuiltinCode) == code and op.version == versions[code]:
                return i
        op = fb.OperatorCodeT()
        op.builtinCode, op.deprecatedBuiltinCode, op.version = code, min(code, 127), versions[code]
        model.operatorCodes.append(op)
        return len(model.operatorCodes) - 1

    def float_twin(index: int) -> int:
        quantized = graph.tensors[index]
        twin = fb.TensorT()
        twin.name, twin.shape, twin.shapeSignature = quantized.name, quantized.shape, quantized.shapeSignature
        twin.type = fb.TensorType.FLOAT32
        model.buffers.append(fb.BufferT())
        twin.buffer = len(model.buffers) - 1
        quantized.name += b"_int8"  # the float twin takes over the signature's tensor name
        graph.tensors.append(twin)
        return len(graph.tensors) - 1

    def operator(code: int, source: int, target: int) -> Any:
        op = fb.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = opcode_index(code), [source], [target]
        return op

    renamed = {}
    for k, index in enumerate(graph.inputs):
        if graph.tensors[index].type == fb.TensorType.INT8:
            renamed[index] = graph.inputs[k] = float_twin(index)
            graph.operators.insert(0, operator(fb.BuiltinOperator.QUANTIZE, renamed[index], index))
    for k, index in enumerate(graph.outputs):
        if graph.tensors[index].type == fb.TensorType.INT8:
            renamed[index] = graph.outputs[k] = float_twin(index)
            graph.operators.append(operator(fb.BuiltinOperator.DEQUANTIZE, index, renamed[index]))
    for signature in model.signatureDefs or []:
        for tensor_map in [*signature.inputs, *signature.outputs]:
            tensor_map.tensorIndex = renamed.get(tensor_map.tensorIndex, tensor_map.tensorIndex)


def _describe(path: Path) -> dict:
    """Meta read back from the written file: I/O tensors, op counts, size, hash, converter versions."""
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_litert.tools import flatbuffer_utils

    interpreter = Interpreter(model_path=str(path))
    model = flatbuffer_utils.read_model(path)
    graph = model.subgraphs[0]
    type_name = {v: k for k, v in vars(fb.TensorType).items() if not k.startswith("_")}
    ops, float_ops, quantized_ops = Counter(), Counter(), 0
    for op in graph.operators:  # an op counts as quantized / float by the type of its (first) output
        name = flatbuffer_utils.opcode_to_name(model, op.opcodeIndex)
        ops[name] += 1
        out_type = type_name[graph.tensors[op.outputs[0]].type]
        if out_type in ("INT8", "UINT8", "INT16"):
            quantized_ops += 1
        elif out_type.startswith("FLOAT"):
            float_ops[name] += 1
    data = path.read_bytes()
    return {
        "input": _tensor_meta(interpreter.get_input_details()[0]),
        "inputs": [_tensor_meta(d) for d in _ordered(interpreter.get_input_details())],
        "output": _tensor_meta(interpreter.get_output_details()[0]),
        "ops": dict(sorted(ops.items())),
        "ops_quantized": quantized_ops,
        "ops_float": sum(float_ops.values()),
        "float_ops": dict(sorted(float_ops.items())),
        "size_bytes": len(data),
        "sha256": sha256_file(path),
        "converter": f"litert-torch {_version('litert-torch')}",
        "versions": {p: _version(p) for p in ("litert-torch", "ai-edge-litert", "torch", "torchao")},
    }


def _ordered(details: list[dict]) -> list[dict]:
    """Input details in the model's argument order (litert-torch names them ...args_<i>...)."""
    import re

    def key(d: dict):
        m = re.search(r"args_(\d+)", d["name"])
        return (0, int(m.group(1))) if m else (1, d["index"])
    return sorted(details, key=key)


def _tensor_meta(detail: dict) -> dict:
    scale, zero_point = detail["quantization"]
    meta = {"name": detail["name"], "shape": [int(d) for d in detail["shape"]], "dtype": np.dtype(detail["dtype"]).name}
    if np.dtype(detail["dtype"]).kind in "iu":
        meta |= {"scale": float(scale), "zero_point": int(zero_point)}
    return meta


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"
