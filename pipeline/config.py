"""Typed, validated configuration: targets (TOML profiles) and the run config.

Unknown keys are errors with the key named; CLI flags and `--set KEY=VALUE` override TOML values.
"""
from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Union, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
TARGETS_DIR = ROOT / "targets"
CALIBRATION_DIR = ROOT / "calibration"


# Names that become file or folder names (targets, calibration sets): one plain path component.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")


def check_name(name: str, what: str) -> str:
    """`name` if it is safe as one path component (no separators, `..`, leading dot), else a UserError."""
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name) or ".." in name:
        raise UserError(f"{what} name {name!r} cannot be used as a folder name",
                        "use letters, digits, '.', '_', '+' or '-' (at most 64, no '..', not starting with '.')")
    return name


def slug(text: str) -> str:
    """A safe name made from free text (a data folder's name): unsafe characters become '-'."""
    s = re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip(".-")[:64].replace("..", "-")
    return s or "data"


class Strict(BaseModel):
    # allow_inf_nan=False: Infinity / NaN (TOML `inf`, --set x=Infinity, 1e999) is never a valid setting
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    def cache_key(self) -> dict:
        """Every setting of this section that can change a stage's outputs: all of them, except those
        declared with NOT_CACHED (speed or bookkeeping only). A new setting is in the key by default."""
        return {k: v for k, v in self.model_dump().items()
                if not (type(self).model_fields[k].json_schema_extra or {}).get("cache_key") is False}


NOT_CACHED = {"cache_key": False}   # json_schema_extra of settings that change speed, never results


# ---------------------------------------------------------------- targets
class Budgets(Strict):
    max_accuracy_drop: float = Field(0.01, ge=0, le=1, description=(
        "0..1; the report and gate hold the shipped artifact's test accuracy to it vs the teacher; the "
        "quantize stage's fallback also holds INT8's own step (vs the float student) to it unless "
        "quantize.max_drop splits the budget"))
    latency_ms: Optional[float] = Field(None, gt=0, description="p50 on the device")
    max_size_mb: Optional[float] = Field(None, gt=0)
    max_latency_regression_pct: float = Field(10.0, ge=0, description="gate: vs the baseline")


class DeviceFacts(Strict):
    name: str
    peak_int8_tops: Optional[float] = Field(None, gt=0)
    peak_fp16_tflops: Optional[float] = Field(None, gt=0)
    memory_bandwidth_gbs: Optional[float] = Field(None, gt=0)
    isa: list[str] = Field(default_factory=list, description=(
        "CPU instruction sets the target assumes for INT8 (x86: avx2, avx512, avx512_vnni, avx_vnni, amx_int8; "
        "ARM: neon, dotprod, i8mm, sve); quantization follows them and the report says when the build host differs"))
    notes: str = ""

    @field_validator("isa")
    @classmethod
    def _known_isa(cls, v: list[str]) -> list[str]:
        from pipeline.bundle.devicekit import ISA_FLAGS
        unknown = [n for n in v if n not in ISA_FLAGS.values()]
        if unknown:
            raise ValueError(f"unknown instruction set(s) {unknown}; known: {sorted(set(ISA_FLAGS.values()))}")
        return v


class TensorRTOptions(Strict):
    version: str = "10.3"
    jetpack: Optional[str] = None
    workspace_mb: int = Field(1024, gt=0)
    fp16_fallback: bool = True
    dla_core: Optional[int] = Field(None, ge=0)
    gpu_fallback: bool = True
    max_batch: int = Field(1, ge=1)


class Target(Strict):
    name: str
    description: str = ""
    backend: str = Field(description="an engine of pipeline/backends (python -m pipeline targets lists them)")
    precision: Literal["int8", "fp16", "fp32", "auto"] = "int8"
    round_to: int = Field(8, ge=1)
    threads: int = Field(2, ge=1)
    io_dtype: Literal["float32", "int8"] = "float32"
    calibration_method: Literal["minmax", "percentile", "entropy"] = "minmax"
    float_fallback: bool = Field(False, description=(
        "when no INT8 configuration meets the accuracy budget, ship the FP32 artifact (ONNX Runtime, TFLite) and "
        "say so; false: such a run ends with exit 1"))
    budgets: Budgets = Budgets()
    device: DeviceFacts
    tensorrt: Optional[TensorRTOptions] = None
    source: str = ""  # where the profile came from (relative path); filled by load_target

    @field_validator("name")
    @classmethod
    def _name_is_one_path_component(cls, v: str) -> str:
        if not SAFE_NAME.fullmatch(v) or ".." in v:
            raise ValueError("must be letters, digits, '.', '_', '+' or '-' (at most 64, no '..', no leading "
                             "'.'): it names the stage folders")
        return v


def _toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise UserError(f"{path.name} is not UTF-8 text (byte {e.start}): TOML files are UTF-8",
                        "save the file as UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path.name} is not valid TOML: {e}", "fix the syntax at the position named") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}", "check the path") from None


def validation_message(e: ValidationError, where: str) -> UserError:
    err = e.errors()[0]
    key = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        return UserError(f"{where}: unknown key '{key}'", "remove it or fix its spelling")
    if err["type"] == "missing":
        return UserError(f"{where}: missing key '{key}'", "add it")
    return UserError(f"{where}: '{key}' {err['msg'].lower()} (got {err.get('input')!r})", "give a value of the right type")


def available_targets() -> list[str]:
    return sorted(p.stem for p in TARGETS_DIR.glob("*.toml"))


def load_target(spec: str) -> Target:
    """`jetson` (a file in targets/) or `path/to/board.toml`."""
    path = Path(spec)
    if path.suffix == ".toml":
        if not path.is_file():
            raise UserError(f"target file not found: {spec}", "check the path")
    else:
        path = TARGETS_DIR / f"{spec}.toml"
        if not path.is_file():
            raise UserError(f"unknown target '{spec}'",
                            f"use one of {', '.join(available_targets())} or a path to a .toml profile")
    data = _toml(path)
    if "input_shape" in data:
        raise UserError(f"{path.name} sets input_shape: a target describes a device, not a model",
                        "remove it; shapes come from the data (or --input-shape where the data cannot tell)")
    data.setdefault("name", path.stem)
    try:
        t = Target(**data)
    except ValidationError as e:
        raise validation_message(e, path.name) from None
    from pipeline import backends
    if t.backend not in backends.BACKENDS:
        raise UserError(f"{path.name}: unknown backend '{t.backend}'", f"use one of {', '.join(backends.BACKENDS)}")
    backends.get(t.backend).complete_target(t)
    try:
        t.source = str(path.resolve().relative_to(ROOT))
    except ValueError:
        t.source = path.name
    return t


def load_targets(spec: str) -> list[Target]:
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise UserError("--target is empty", f"name one of {', '.join(available_targets())}")
    targets = [load_target(n) for n in names]
    seen = set()
    for t in targets:
        if t.name in seen:
            raise UserError(f"target '{t.name}' named twice", "name each target once")
        seen.add(t.name)
    return targets


# ---------------------------------------------------------------- run config
class LoadConfig(Strict):
    latency_runs: int = Field(100, ge=5, description="timed runs of the teacher (host p50)")


class PruneConfig(Strict):
    enabled: bool = Field(True, description="false: ship the loaded model unpruned")
    macs_reduction: float = Field(0.5, ge=0.0, lt=1.0, description="fraction of MACs to remove")
    criterion: Literal["l1", "l2", "bn_scale", "taylor", "lamp"] = Field(
        "l2", description="channel importance: weight l1/l2 norm, BatchNorm scale, Taylor (gradient) or LAMP")
    global_pruning: bool = Field(True, description="rank channels across layers (capped by max_layer_ratio); "
                                 "false: the same ratio in every group")
    ignore: list[str] = Field(default_factory=list, description="module names never pruned")
    round_to: Optional[int] = Field(None, ge=1, description="default: the target's round_to")
    tolerance: float = Field(0.02, gt=0, lt=0.5, description="allowed miss of the MACs/params goal (fraction of the unpruned)")
    budget: Literal["macs", "params", "ratio", "latency"] = Field(
        "macs", description="what the search aims at: macs_reduction, params_reduction, ratio or latency_ms")
    params_reduction: float = Field(0.5, ge=0.0, lt=1.0, description="fraction of parameters to remove (budget=params)")
    ratio: float = Field(0.5, ge=0.0, lt=1.0, description="channel pruning ratio of every group (budget=ratio)")
    latency_ms: Optional[float] = Field(None, gt=0, description="ONNX Runtime FP32 p50 goal (budget=latency), on the host or latency_remote")
    latency_runs: int = Field(50, ge=5, description="timed runs per latency measurement (budget=latency)")
    latency_remote: Optional[str] = Field(None, description=(
        "user@host[:port]: time latency-budget candidates on this device over SSH (ONNX Runtime FP32 there, "
        "the ssh config and keys of bench --remote) instead of on the host"))
    latency_remote_python: str = Field("python3", description="the device's Python for latency_remote")
    max_layer_ratio: float = Field(0.75, gt=0.0, le=1.0, description="most of any one group pruned (global pruning)")
    ignore_stem: bool = Field(False, description="never prune the first conv/linear layer (the input stem)")
    iterative_steps: int = Field(1, ge=1, le=10, description="prune in this many steps, with a short KD between")
    step_kd_batches: int = Field(200, ge=0, description="KD batches (of distill.batch_size) between iterative steps")


class DistillConfig(Strict):
    enabled: bool = Field(True, description="false: ship the pruned model untrained")
    epochs: float = Field(3.0, gt=0, description="passes over the training set (fractions allowed); most of the "
                          "default run's time")
    batch_size: int = Field(128, ge=1, description="global batch (split across torchrun ranks)")
    lr: float = Field(0.02, gt=0, description="peak SGD (Nesterov) learning rate, cosine schedule")
    weight_decay: float = Field(1e-4, ge=0, description="SGD weight decay")
    warmup_epochs: float = Field(0.2, ge=0, description="linear learning-rate warm-up")
    temperature: float = Field(4.0, gt=0, description="softmax temperature of the soft targets")
    alpha: float = Field(0.7, ge=0, le=1, description="weight of the soft-target KL term")
    val_fraction: float = Field(0.05, ge=0, lt=0.5, description="training samples held out to pick the best "
                                "checkpoint")
    train_limit: Optional[int] = Field(None, ge=1, description="use only this many training samples")
    patience: int = Field(3, ge=1, description="validations without improvement before stopping early")
    checkpoint_every: int = Field(100, ge=1, description="steps between resume checkpoints", json_schema_extra=NOT_CACHED)
    feature_layers: list[str] = Field(default_factory=list, description=(
        "modules (shared by teacher and student) whose outputs are matched through learned adapters; "
        "[\"auto\"] = the end of each spatial stage; [\"blocks\"] = the hidden state of every encoder block "
        "(transformers), matched to the teacher block layer_map names; [] = logits only"))
    layer_map: Union[Literal["uniform"], list[int]] = Field("uniform", description=(
        "with feature_layers=[\"blocks\"]: the teacher block each student block learns from; uniform: student "
        "block i of Ls -> teacher block round((i+1)*Lt/Ls)-1, or a list of teacher block indices"))
    feature_weight: float = Field(1.0, ge=0, description="weight of the feature-matching MSE term")
    feature_cache_mb: int = Field(4096, ge=0, description="cache the teacher's features (fp16) up to this size; "
                                  "above it the teacher runs every step", json_schema_extra=NOT_CACHED)
    # the device changes speed (and float rounding), not what is trained
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: the GPU when torch sees one",
                                                   json_schema_extra=NOT_CACHED)


class QuantizeConfig(Strict):
    calibration: str = Field("auto", description="a set under calibration/, or auto: <data>-512, built on first use")
    method: Optional[Literal["minmax", "percentile", "entropy"]] = Field(
        None, description="activation calibration; default: the target's calibration_method")
    percentile: float = Field(99.99, gt=90, le=100, description="clip activations at this percentile (method=percentile)")
    # Off by default: 13 extra quantize+evaluate runs for the default student cost ~2 min on a loaded 2-core
    # host and would push the default run past 10 min. Fallback still ranks layers when the budget is missed.
    sensitivity: bool = Field(False, description="rank layers by their INT8 error when only they stay float")
    fallback: bool = Field(True, description="keep the most sensitive layers in float until the budget is met")
    max_drop: Optional[float] = Field(None, ge=0, le=1, description="INT8 accuracy drop vs the float model "
                                      "allowed by fallback; default: the target's budgets.max_accuracy_drop")
    max_float_layers: int = Field(4, ge=0, description="fallback keeps at most this many layers in float")
    heldout_samples: int = Field(1000, ge=50, description="held-out training samples (never calibration "
                                 "or test samples) that sensitivity and fallback are measured on")
    per_channel: bool = Field(True, description="int8 weights per output channel; false = one scale per tensor, "
                              "for accelerators that need it (not for TensorRT targets)")
    equalize: bool = Field(False, description="cross-layer equalization before quantizing (depthwise-safe PTQ; "
                           "exact in float)")
    bias_correction: bool = Field(False, description="correct each layer's bias for the mean shift its INT8 "
                                  "weight rounding causes, measured on the calibration set")
    isa_aware: bool = Field(True, description="INT8 settings follow the target's [device] isa (x86 without VNNI: "
                            "7-bit weights, reduce_range); false: the runtime's defaults (pipeline/isa.py)")


class PreprocessConfig(Strict):
    preset: Optional[Literal["imagenet", "tf", "inception"]] = Field(None, description=(
        "photos (--data DIR): imagenet = resize 256, crop 224, RGB, ImageNet mean/std; tf / inception = "
        "256 / 224, RGB, x / 127.5 - 1; the other settings override its values"))
    resize: Optional[int] = Field(None, ge=1, description="resize each image's shorter side to this (bilinear); "
                                  "default: the preset's, else kept")
    crop: Optional[list[int]] = Field(None, min_length=1, max_length=2, description=(
        "centre crop [size] or [h, w] after resize; default: the preset's, else none (all images one size)"))
    color: Optional[Literal["rgb", "bgr", "gray"]] = Field(None, description=(
        "channel order the model takes; default: the preset's, else gray when every file is gray, rgb otherwise"))
    class_map: Optional[str] = Field(None, description=(
        "file giving the model's class order when folder names are not it: .txt (line i = the folder of "
        "class i) or .json ({folder: index}); default: sorted folder names"))
    decode_batch: int = Field(64, ge=1, description="images decoded at a time (peak memory)",
                              json_schema_extra=NOT_CACHED)

    @field_validator("crop")
    @classmethod
    def _positive(cls, v):
        if v is not None and any(int(d) < 1 for d in v):
            raise ValueError("crop sizes must be >= 1")
        return v


class EvaluateConfig(Strict):
    test_limit: Optional[int] = Field(None, ge=1, description="evaluate on the first N test samples")
    warmup: int = Field(20, ge=0, description="untimed runs before timing")
    runs: int = Field(200, ge=5, description="timed batch-1 runs per artifact (p50/p90/p99)")
    batch_size: int = Field(256, ge=1, description="batch for scoring the test set")


class HandoffConfig(Strict):
    eval_samples: int = Field(500, ge=0, description=(
        "labelled test samples shipped in each bundle (eval.npz, sha256 in the manifest) for the device's own "
        "accuracy figure; 0: none"))


class DetectionConfig(Strict):
    output_layout: Literal["auto", "xywh-scores", "anchors-last", "xywh-obj-scores"] = Field(
        "auto", description="detector output layout: (N, 4+C, A) xywh-scores as YOLOv8/11, (N, A, 4+C) anchors-last, "
        "(N, A, 5+C) xywh-obj-scores as YOLOv5; auto: from the output shape and class count when unambiguous")
    strides: list[int] = Field([8, 16, 32], min_length=1, description="the head's strides, finest first (anchor "
                               "points for the ground-truth loss in distillation)")
    score_threshold: float = Field(0.001, ge=0, lt=1, description="detections kept for mAP (COCO practice: 0.001)")
    conf_threshold: float = Field(0.25, gt=0, lt=1, description="deployment threshold: golden boxes, pictures, the "
                                  "reference detections agreement is scored against")
    iou_threshold: float = Field(0.6, gt=0, le=1, description="per-class NMS IoU")
    max_detections: int = Field(100, ge=1, description="detections per image after NMS")
    trt_nms: bool = Field(False, description="TensorRT targets: also ship model.int8.qdq.nms.onnx ending in the "
                          "EfficientNMS_TRT plugin (not verified on the build host: no TensorRT)")
    input_size: int = Field(640, ge=32, le=4096, description="YOLO / COCO folders: images are letterboxed to "
                            "input_size x input_size")


DETECTION_DEFAULTS = {"prune": {"macs_reduction": 0.3},
                      # the output tail + the six head convs of a three-level detector may all stay float
                      "quantize": {"max_float_layers": 7},
                      "distill": {"epochs": 30.0, "lr": 0.05, "temperature": 1.0, "patience": 8,
                                  "feature_layers": ["auto"]}}


class RunConfig(Strict):
    seed: int = Field(0, description="every random choice (calibration, training order, held-out samples)")
    task: str = Field("classification", description="classification | regression | text-classification | detection | FILE.py:NAME "
                      "(a Task plug-in)")
    model: str = Field("default", description="default | text-default | hf:DIR | FILE.py:FACTORY | MODEL.pt2 | "
                       "MODEL.onnx (default: the task's bundled model)")
    weights: Optional[str] = Field(None, description="a state_dict for FILE.py:FACTORY (loaded weights-only)")
    data: str = Field("fashion-mnist", description="fashion-mnist | fine-foods (text) | FILE.npz | DIR "
                      "(train/<class>/*.png, test/...)")
    input_shape: Optional[Union[list[int], dict[str, list[int]]]] = Field(
        None, description="per-input shapes with the batch axis, {name: [1, 3, 224, 224]} (a list names the first "
        "input); default: from the data, which it must agree with")
    dynamic: dict[str, list[int]] = Field(
        default_factory=dict, description="dynamic axes {batch|seq|NAME:AXIS: [lo, hi]}: ONNX symbolic dims, "
        "TensorRT profiles, one latency row per shape")
    mean: Optional[list[float]] = Field(None, description="per-channel image mean; default: the data's")
    std: Optional[list[float]] = Field(None, description="per-channel image std; default: the data's")
    trust_model: bool = Field(False, description="run model / task code from outside this repository")
    load: LoadConfig = LoadConfig()
    prune: PruneConfig = PruneConfig()
    distill: DistillConfig = DistillConfig()
    quantize: QuantizeConfig = QuantizeConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    handoff: HandoffConfig = HandoffConfig()
    detection: DetectionConfig = DetectionConfig()

    @model_validator(mode="after")
    def _task_defaults(self):
        """--task text-classification with no --model / --data runs the bundled text model on fine-food reviews."""
        if self.task == "text-classification":
            if self.model in ("", "default") and "model" not in self.model_fields_set:
                self.model = "text-default"
            if self.data == "fashion-mnist" and "data" not in self.model_fields_set:
                self.data = "fine-foods"
        if self.task == "detection":
            if self.model in ("", "default") and "model" not in self.model_fields_set:
                self.model = "detect-default"
            if self.data == "fashion-mnist" and "data" not in self.model_fields_set:
                self.data = "fashion-detect"
            # A detector's head has more to relearn than a classifier's: a lighter cut, a longer distillation
            # (each epoch of the bundled detector is ~15 s on 2 cores) that also matches the teacher's raw
            # class maps and early features (feature_layers auto: val mAP 0.63 vs 0.56 at epoch 11, same
            # budget, benchmarks/README.md); any value set wins.
            for section, values in DETECTION_DEFAULTS.items():
                cfg = getattr(self, section)
                for k, v in values.items():
                    if k not in cfg.model_fields_set:
                        setattr(cfg, k, v)
                        cfg.model_fields_set.discard(k)
        return self


def settings() -> list[dict]:
    """Every run setting, in the order of RunConfig: key (as --set takes it), type, default, help, and the
    constraints pydantic checks (ge, lt, ...)."""
    rows = []

    def add(key: str, f) -> None:
        ann = f.annotation
        kind = getattr(ann, "__name__", None) if isinstance(ann, type) else str(ann).replace("typing.", "")
        default = f.get_default(call_default_factory=True)
        ops = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
        limits = ", ".join(f"{ops[k]} {getattr(m, k)}" for m in f.metadata for k in ops if hasattr(m, k))
        rows.append({"key": key, "type": kind, "default": default, "help": f.description or "", "limits": limits})

    for name, f in RunConfig.model_fields.items():
        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel):
            for k, g in f.annotation.model_fields.items():
                add(f"{name}.{k}", g)
        else:
            add(name, f)
    return rows


def _parse_value(raw: str) -> Any:
    """`--set` values: JSON/TOML-ish literals (numbers, true/false, lists), else the string."""
    low = raw.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def apply_overrides(data: dict, sets: list[str]) -> dict:
    for item in sets:
        if "=" not in item:
            raise UserError(f"--set {item!r} has no '='", "write --set section.key=value, e.g. --set distill.epochs=1")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {key}: '{p}' is not a section", "set a leaf key such as distill.epochs")
        node[parts[-1]] = _parse_value(raw)
    return data


def build_run_config(config_file: str | None, overrides: dict, sets: list[str]) -> RunConfig:
    data: dict = _toml(Path(config_file)) if config_file else {}
    for k, v in overrides.items():
        if v is not None:
            data[k] = v
    apply_overrides(data, sets)
    try:
        return RunConfig(**data)
    except ValidationError as e:
        raise validation_message(e, Path(config_file).name if config_file else "config") from None
