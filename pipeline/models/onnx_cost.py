"""Cost figures read from an ONNX graph: the cross-check of `count_macs` / `count_params`.

The exported graph is what every engine runs, so its multiply-accumulates (Conv, ConvTranspose, Gemm,
MatMul, from ONNX shape inference at the export's input shape) and its parameter count (float
initializers) are an independent count of what the torch-side counters (module hooks) report. The load
and prune stages record both; a difference names the layers one of them missed.
"""
from __future__ import annotations

import math
from pathlib import Path

WEIGHT_DTYPES = {1, 10, 11, 16}     # float, float16, double, bfloat16 initializers are parameters


def _shapes(model) -> dict[str, list[int]]:
    import onnx
    inferred = onnx.shape_inference.infer_shapes(model)
    out = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            out[vi.name] = [d.dim_value for d in dims]
    for init in inferred.graph.initializer:
        out[init.name] = list(init.dims)
    return out


def onnx_cost(path: Path) -> dict:
    """{"macs": per-sample MACs of Conv/ConvTranspose/Gemm/MatMul nodes, "params": float initializer
    elements, "unresolved": nodes whose shapes inference could not give}."""
    import onnx
    model = onnx.load(str(path))
    shapes = _shapes(model)
    macs, unresolved = 0, []
    for n in model.graph.node:
        if n.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        x, w, y = (shapes.get(n.input[0]), shapes.get(n.input[1]) if len(n.input) > 1 else None,
                   shapes.get(n.output[0]))
        if x is None or w is None or y is None:
            unresolved.append(n.name)
            continue
        batch = y[0] if len(y) > 1 else 1
        if n.op_type == "Conv":                      # out elements x (in / groups) x kernel
            macs += math.prod(y) * math.prod(w[1:]) // batch
        elif n.op_type == "ConvTranspose":           # in elements x (out / groups) x kernel
            macs += math.prod(x) * math.prod(w[1:]) // batch
        elif n.op_type == "Gemm":
            trans_a = next((a.i for a in n.attribute if a.name == "transA"), 0)
            k = x[0] if trans_a else x[-1]
            macs += math.prod(y) * k // batch
        else:                                        # MatMul: out elements x the contracted size
            macs += math.prod(y) * x[-1] // batch
    params = sum(math.prod(t.dims) for t in model.graph.initializer if t.data_type in WEIGHT_DTYPES)
    return {"macs": int(macs), "params": int(params), "unresolved": unresolved}
