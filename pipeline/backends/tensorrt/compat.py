"""TensorRT's ONNX parser rules, checked statically on the host (needs only onnx): which ops and opsets
the parser of a given TensorRT version reads, and what explicit (Q/DQ) quantization must look like.
Written against TensorRT 10.x (JetPack 6 ships 10.3) and 11.x (strongly typed networks only)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from pipeline.backends.onnxruntime import io_shapes, load_onnx
from pipeline.errors import UserError

# ---------------------------------------------------------------- TensorRT ONNX parser facts
# Operators TensorRT's ONNX parser imports, from onnx-tensorrt docs/operators.md (github.com/onnx/
# onnx-tensorrt, "TensorRT 10.15 supports operators in the inclusive range of opset 9 to opset 24",
# rows marked "Y"). Ops that docs/Changelog.md records as added after 10.0 carry the version that
# added them (10.1 DeformConv; 10.4 Blackman/Hamming/HannWindow; 10.5 STFT; 10.14 Attention;
# 10.15 RotaryEmbedding, RMSNormalization, TensorScatter); every other op is taken as present from
# 10.0 on. The 10.3 page itself was not available, so 10.3 = this list minus the later additions.
TRT_OPS_SINCE: dict[str, tuple[int, int]] = {
    **{op: (10, 0) for op in (
        "Abs", "Acos", "Acosh", "Add", "And", "ArgMax", "ArgMin", "Asin", "Asinh", "Atan", "Atanh",
        "AveragePool", "BatchNormalization", "Cast", "CastLike", "Ceil", "Celu", "Clip", "Concat", "Constant",
        "ConstantOfShape", "Conv", "ConvTranspose", "Cos", "Cosh", "CumSum", "DepthToSpace",
        "DequantizeLinear", "Div", "Dropout", "Einsum", "Elu", "Equal", "Erf", "Exp", "Expand", "EyeLike",
        "Flatten", "Floor", "Gather", "GatherElements", "GatherND", "Gelu", "Gemm", "GlobalAveragePool",
        "GlobalLpPool", "GlobalMaxPool", "Greater", "GreaterOrEqual", "GridSample", "GroupNormalization",
        "GRU", "HardSigmoid", "HardSwish", "Hardmax", "Identity", "If", "ImageScaler",
        "InstanceNormalization", "IsInf", "IsNaN", "LayerNormalization", "LeakyRelu", "Less",
        "LessOrEqual", "Log", "LogSoftmax", "Loop", "LRN", "LSTM", "LpNormalization", "LpPool", "MatMul",
        "Max", "MaxPool", "Mean", "MeanVarianceNormalization", "Min", "Mish", "Mod", "Mul", "Neg",
        "NonMaxSuppression", "NonZero", "Not", "OneHot", "Or", "Pad", "ParametricSoftplus", "Pow", "PRelu",
        "QuantizeLinear", "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Range",
        "Reciprocal", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
        "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare", "Relu", "Reshape", "Resize",
        "ReverseSequence", "RNN", "RoiAlign", "Round", "ScaledTanh", "Scan", "Scatter", "ScatterElements",
        "ScatterND", "Selu", "Shape", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh", "Size", "Slice", "Softmax",
        "Softplus", "Softsign", "SpaceToDepth", "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tan", "Tanh",
        "ThresholdedRelu", "Tile", "TopK", "Transpose", "Trilu", "Unsqueeze", "Upsample", "Where", "Xor")},
    "DeformConv": (10, 1),
    "BlackmanWindow": (10, 4), "HammingWindow": (10, 4), "HannWindow": (10, 4),
    "STFT": (10, 5),
    "Attention": (10, 14),
    "RotaryEmbedding": (10, 15), "RMSNormalization": (10, 15), "TensorScatter": (10, 15),
}
# Highest ONNX opset per documented parser version (operators.md headers of 10.0 and 10.15); a
# version in between gets the bound of the nearest documented version at or below it.
TRT_MAX_OPSET: dict[tuple[int, int], int] = {(10, 0): 20, (10, 15): 24}
TRT_MIN_OPSET = 9
# The range the rules describe. TensorRT 11 is taken to parse what 10.15 parses (no 11.x operator
# table was available to check against; stated in the README). What 11 changes is typing: it has no
# INT8/FP16 builder flags, so precision must come from the graph itself (rule "weak-typing" below).
TRT_VERSIONS = ((10, 0), (11, 99))
STRONGLY_TYPED_FROM = (11, 0)           # TensorRT 11 builds strongly typed networks only
DEFAULT_TRT_VERSION = "10.3"
# Output-channel axis of a per-channel quantized weight, by consumer op (input index 1 = the weight).
WEIGHT_AXIS = {"Conv": lambda node, rank: 0, "ConvTranspose": lambda node, rank: 1,
                "Gemm": lambda node, rank: 0 if attr(node, "transB", 0) else 1,
                "MatMul": lambda node, rank: rank - 1}



# ---------------------------------------------------------------- graph facts shared by the checks
def attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers and Constant-node outputs of the main graph, as arrays."""
    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and attr(n, "value", None) is not None:
            consts[n.output[0]] = numpy_helper.to_array(attr(n, "value", None))
    return consts


def qdq_nodes(model: onnx.ModelProto) -> list[dict[str, Any]]:
    """Every QuantizeLinear/DequantizeLinear with its quantization facts.

    Each entry: node, quantized dtype (None when not determinable), zero point (array or None),
    scale (array or None when not a constant), axis (normalized, None when per-tensor), whether it
    quantizes a weight (constant data, directly or through a QuantizeLinear), weight rank, and the
    consumers of the weight (op node, input index) for the per-channel axis rule.
    """
    consts = constants(model)
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for n in model.graph.node:
        for idx, i in enumerate(n.input):
            consumers.setdefault(i, []).append((n, idx))

    def weight_source(node: onnx.NodeProto) -> np.ndarray | None:
        x = node.input[0]
        if x in consts:
            return consts[x]
        src = producers.get(x)
        if node.op_type == "DequantizeLinear" and src is not None and src.op_type == "QuantizeLinear":
            return consts.get(src.input[0])
        return None

    def dq_outputs(node: onnx.NodeProto) -> list[str]:
        if node.op_type == "DequantizeLinear":
            return [node.output[0]]
        return [c.output[0] for c, _ in consumers.get(node.output[0], []) if c.op_type == "DequantizeLinear"]

    out = []
    for n in model.graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        zp = consts.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        scale = consts.get(n.input[1])
        weight = weight_source(n)
        if zp is not None:
            qtype = zp.dtype
        elif n.op_type == "DequantizeLinear" and n.input[0] in consts:
            qtype = consts[n.input[0]].dtype
        elif n.op_type == "QuantizeLinear":
            qtype = np.dtype(np.uint8)          # ONNX: a QuantizeLinear without zero point outputs uint8
        else:
            qtype = None                         # a DequantizeLinear fed by a QuantizeLinear: checked there
        rank = weight.ndim if weight is not None else None
        axis = None
        if scale is not None and scale.size > 1:
            axis = int(attr(n, "axis", 1))
            if axis < 0 and rank is not None:
                axis += rank
        out.append({"node": n, "qtype": qtype, "zero_point": zp, "scale": scale, "axis": axis,
                    "weight": weight is not None, "rank": rank,
                    "uses": [use for o in dq_outputs(n) for use in consumers.get(o, [])]})
    return out


def parse_version(version: str) -> tuple[int, int]:
    m = re.match(r"^(\d+)\.(\d+)", str(version))
    if not m:
        raise UserError(f"cannot read TensorRT version '{version}'", "give it as MAJOR.MINOR, e.g. 10.3")
    v = (int(m.group(1)), int(m.group(2)))
    if not TRT_VERSIONS[0] <= v <= TRT_VERSIONS[1]:
        lo, hi = (".".join(map(str, t)) for t in TRT_VERSIONS)
        raise UserError(f"no TensorRT ONNX operator table for version {version}",
                        f"use a TensorRT version from {lo} to {hi} (tensorrt.version in the target TOML)")
    return v


# ---------------------------------------------------------------- static compatibility check
def check_compat(onnx_path: Path, trt_version: str = DEFAULT_TRT_VERSION, dynamic_batch: bool = False,
                 fp16_expected: bool = False, profiles: dict | None = None) -> list[dict]:
    """Problems that would stop (or silently change) a TensorRT explicit-quantization build.

    Needs only onnx. Rules (the "rule" of each problem):
      opset              the model's ONNX opset is outside what this parser version reads
      unsupported-op     op not imported by TensorRT's ONNX parser of `trt_version` (or a custom domain)
      qdq-type           quantized type is not int8 (uint8/int32 zero point, or a QuantizeLinear with
                         no zero point, which ONNX defines as uint8)
      qdq-zero-point     zero point not all 0 (TensorRT quantization is symmetric)
      qdq-scale          scale is not a build-time constant
      qdq-axis           per-channel weight scale not on the output-channel axis of its consumer
      qdq-per-channel-activation   an activation quantized per channel (must be per tensor)
      dynamic-shape      a graph input/output dim that is not fixed (the batch dim is allowed when
                         `dynamic_batch`, and then needs an optimization profile at build time)
      static-batch       `dynamic_batch` asked for but the input batch dim is fixed
      weak-typing        TensorRT 11 (strongly typed only): `fp16_expected` but the graph's float
                         layers are float32, so they would run in fp32 (no FP16 builder flag exists)
    Each problem: {"node", "op", "rule", "message"}. An empty list means compatible.
    """
    version = parse_version(trt_version)
    model = load_onnx(onnx_path)
    problems: list[dict] = []

    def problem(node: str, op: str, rule: str, message: str) -> None:
        problems.append({"node": node, "op": op, "rule": rule, "message": message})

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    max_opset = TRT_MAX_OPSET[max(v for v in TRT_MAX_OPSET if v <= version)]
    if opset is not None and not TRT_MIN_OPSET <= opset <= max_opset:
        problem("", "model", "opset", f"ONNX opset {opset}; TensorRT {trt_version}'s parser reads opsets "
                f"{TRT_MIN_OPSET} to {max_opset}")

    for n in model.graph.node:
        if n.domain not in ("", "ai.onnx"):
            problem(n.name, n.op_type, "unsupported-op",
                    f"custom op in domain '{n.domain}': TensorRT needs a plugin for it")
        elif TRT_OPS_SINCE.get(n.op_type, (99, 0)) > version:
            since = TRT_OPS_SINCE.get(n.op_type)
            problem(n.name, n.op_type, "unsupported-op",
                    f"{n.op_type} is not supported by TensorRT {trt_version}'s ONNX parser"
                    + (f" (supported from {since[0]}.{since[1]})" if since else ""))

    for q in qdq_nodes(model):
        n = q["node"]
        if q["qtype"] is not None and q["qtype"] != np.int8:
            why = "no zero point (ONNX then means uint8)" if q["zero_point"] is None else f"{q['qtype']} zero point"
            problem(n.name, n.op_type, "qdq-type", f"{why}: TensorRT INT8 needs an int8 zero point")
        if q["zero_point"] is not None and np.any(q["zero_point"] != 0):
            problem(n.name, n.op_type, "qdq-zero-point",
                    f"zero point {np.unique(q['zero_point'])[:4].tolist()}: TensorRT needs 0 (symmetric quantization)")
        if q["scale"] is None:
            problem(n.name, n.op_type, "qdq-scale", "scale is not an initializer or Constant")
        if q["axis"] is None:
            continue
        if not q["weight"]:
            problem(n.name, n.op_type, "qdq-per-channel-activation",
                    f"activation quantized per channel (axis {q['axis']}): TensorRT needs one scale per activation")
            continue
        for use, idx in q["uses"]:
            if use.op_type in WEIGHT_AXIS and idx == 1:
                want = WEIGHT_AXIS[use.op_type](use, q["rank"])
                if q["axis"] != want:
                    problem(n.name, n.op_type, "qdq-axis",
                            f"per-channel weight scale on axis {q['axis']}, but {use.op_type} '{use.name}' "
                            f"needs the output-channel axis {want}")

    inits = {i.name for i in model.graph.initializer}
    shapes = io_shapes(model)
    for kind, tensors in (("input", shapes["inputs"]), ("output", shapes["outputs"])):
        for name, dims in tensors.items():
            if name in inits:
                continue
            for i, d in enumerate(dims):
                if isinstance(d, int) and d > 0:
                    continue
                if (i == 0 and dynamic_batch) or (profiles and (kind == "output" or name in profiles)):
                    continue       # covered by the optimization profile (outputs follow their inputs)
                problem(name, kind, "dynamic-shape",
                        f"{kind} dim {i} is dynamic ('{d}'): TensorRT needs fixed dims"
                        + (" (only the batch dim may vary, with min/opt/max batch)" if i else
                           " (or pass dynamic_batch with min/opt/max batch for a profile)"))
            if kind == "input" and dynamic_batch and dims and isinstance(dims[0], int) and dims[0] > 0:
                problem(name, kind, "static-batch",
                        f"dynamic batch asked for, but input batch dim is fixed at {dims[0]}: re-export with dynamic_batch")
    if version >= STRONGLY_TYPED_FROM and fp16_expected:
        fp16 = any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
        if not fp16:
            problem("", "model", "weak-typing",
                    f"TensorRT {trt_version} builds strongly typed networks only: the float layers of this QDQ ONNX are "
                    "float32, so they run in fp32 there (no FP16 builder flag); store them as fp16 in the ONNX")
    return problems


def strongly_typed(trt_version: str) -> bool:
    """Whether the network for this TensorRT version must be built strongly typed (11.x and later)."""
    return parse_version(trt_version) >= STRONGLY_TYPED_FROM
