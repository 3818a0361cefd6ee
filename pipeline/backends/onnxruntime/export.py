"""FP32 ONNX export (the hand-off format of every later stage): named inputs, one output "logits"."""
from __future__ import annotations

import io
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

from pipeline.backends.onnxruntime.common import (INPUT_NAME, MAX_OPSET, MIN_OPSET, OUTPUT_NAME, cpu_session,
                                                  io_shapes)
from pipeline.data.inputs import Inputs
from pipeline.errors import UserError
from pipeline.hashing import sha256_file


def export_onnx(model: "torch.nn.Module", example, out_path: Path, opset: int = 17,
                dynamic_batch: bool = False, dynamic_axes: dict[str, dict[int, str]] | None = None) -> dict:
    """Export `model` to a simplified FP32 ONNX file with its inputs by name and one output "logits".

    `example`: one normalized sample as Inputs (named inputs, each passed as a forward() argument in
    order; a single x_<split> input is named "input") or a float32 tensor (named "input").
    `dynamic_axes` {input name: {axis: symbol}} adds dynamic axes beyond the batch (e.g. a sequence).

    Uses the TorchScript exporter (`torch.onnx.export(..., dynamo=False)`): it emits the requested
    opset (the dynamo exporter starts at 18), folds BatchNorm into Conv, keeps GlobalAveragePool,
    and writes byte-identical files for the same model. onnxslim then removes Identity nodes and
    folds constants. The shape is static (from `example`) unless `dynamic_batch`, which names the
    batch dimension "batch". The exported graph is run once in ONNX Runtime against PyTorch.
    """
    import onnxslim
    import torch

    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UserError(f"ONNX opset {opset} is not supported", f"use an opset from {MIN_OPSET} to {MAX_OPSET}")
    if isinstance(example, torch.Tensor):
        if example.dtype != torch.float32:
            raise UserError("the export example must be a float32 torch.Tensor or Inputs",
                            "pass one normalized input batch, e.g. torch.zeros(1, 1, 28, 28)")
        example = Inputs.of(example.detach().cpu().numpy())
    if not isinstance(example, Inputs):
        raise UserError(f"the export example must be a float32 torch.Tensor or Inputs, got {type(example).__name__}",
                        "pass one normalized input batch, e.g. torch.zeros(1, 1, 28, 28)")
    names = [INPUT_NAME] if example.positional else example.names
    args = example.torch()
    axes: dict[str, dict[int, str]] = {}
    if dynamic_batch:
        axes = {n: {0: "batch"} for n in [*names, OUTPUT_NAME]}
    for n, more in (dynamic_axes or {}).items():
        axes.setdefault(n, {}).update(more)
    was_training = model.training
    model.eval()
    buf = io.BytesIO()
    try:
        with torch.no_grad():
            reference = model(*args)
            if not isinstance(reference, torch.Tensor):
                raise UserError(f"the model returns {type(reference).__name__}, not one tensor",
                                "export a model whose forward returns the logits tensor only")
            with warnings.catch_warnings():
                # The TorchScript exporter is chosen on purpose (see the docstring); silence its notice.
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                # nn.MultiheadAttention's eval fast path (aten::_native_multi_head_attention) has no ONNX
                # symbolic; the plain path exports.
                fastpath = torch.backends.mha.get_fastpath_enabled()
                torch.backends.mha.set_fastpath_enabled(False)
                try:
                    torch.onnx.export(
                        model, args, buf, dynamo=False, opset_version=opset, do_constant_folding=True,
                        input_names=names, output_names=[OUTPUT_NAME], dynamic_axes=axes or None,
                    )
                finally:
                    torch.backends.mha.set_fastpath_enabled(fastpath)
    finally:
        model.train(was_training)

    slim = onnxslim.slim(onnx.load_from_string(buf.getvalue()))
    onnx.checker.check_model(slim, full_check=True)
    data = slim.SerializeToString(deterministic=True)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(data)

    shapes = io_shapes(slim)
    feed = {n: a.numpy() for n, a in zip(names, args) if n in shapes["inputs"]}   # an unused input is folded away
    got = cpu_session(data).run([OUTPUT_NAME], feed)[0]
    return {
        "exporter": "torch.onnx.export (TorchScript, dynamo=False)",
        "torch": torch.__version__,
        "simplifier": f"onnxslim {onnxslim.__version__}",
        "opset": opset,
        "input": {"name": names[0], "shape": list(shapes["inputs"].get(names[0], ()))},
        "inputs": [{"name": n, "shape": list(s)} for n, s in shapes["inputs"].items()],
        "output": {"name": OUTPUT_NAME, "shape": list(shapes["outputs"][OUTPUT_NAME])},
        "dynamic_batch": dynamic_batch,
        "dynamic_axes": {n: {str(k): v for k, v in d.items()} for n, d in axes.items()},
        "n_nodes": len(slim.graph.node),
        "op_types": dict(sorted(Counter(n.op_type for n in slim.graph.node).items())),
        "bytes": len(data),
        "sha256": sha256_file(out_path),
        "max_abs_diff_vs_torch": float(np.abs(got - reference.numpy()).max()),
    }
