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
                dynamic_batch: bool = False, dynamic_axes: dict[str, dict[int, str]] | None = None,
                dynamic=None) -> dict:
    """Export `model` to a simplified FP32 ONNX file with its inputs by name and one output "logits".

    `example`: one normalized sample as Inputs (named inputs, each passed as a forward() argument in
    order; a single x_<split> input is named "input") or a float32 tensor (named "input").
    `dynamic_axes` {input name: {axis: symbol}} adds dynamic axes beyond the batch (e.g. a sequence);
    `dynamic` (pipeline/data/shapes.Dynamic, the run's --dynamic axes) adds its axes and checks that the
    graph answers like torch at the smallest and the largest declared shape (a size the tracer froze
    into the graph is refused, not shipped).

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
    for n, more in {**(dynamic_axes or {}), **(dynamic.onnx_axes(OUTPUT_NAME) if dynamic else {})}.items():
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
    checked = _check_dynamic(model, data, feed, dynamic) if dynamic else []
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
        "dynamic_checked": checked,
        "n_nodes": len(slim.graph.node),
        "op_types": dict(sorted(Counter(n.op_type for n in slim.graph.node).items())),
        "bytes": len(data),
        "sha256": sha256_file(out_path),
        "max_abs_diff_vs_torch": float(np.abs(got - reference.numpy()).max()),
    }


def _check_dynamic(model, data: bytes, feed: dict[str, np.ndarray], dynamic) -> list[dict]:
    """Run torch and ONNX Runtime at the smallest and the largest declared shape (real samples cut or
    repeated to size); refuse an export whose graph froze a size or answers differently there."""
    import torch

    from pipeline.data.shapes import resize_to

    rows = dynamic.latency_shapes({n: list(a.shape) for n, a in feed.items()})
    session, checked = cpu_session(data), []
    for label, shapes in [rows[0], rows[-1]] if len(rows) > 1 else rows:
        x = resize_to(feed, {n: shapes[n] for n in feed})
        try:
            with torch.no_grad():
                ref = model(*[torch.from_numpy(a) for a in x.values()]).numpy()
        except Exception as e:      # the model's own limit (e.g. its position table): the range is the user's
            raise UserError(f"the model itself fails at {label} ({type(e).__name__}: {str(e).splitlines()[0][:160]})",
                            "declare a --dynamic range the model takes (e.g. up to its maximum sequence length)") from None
        try:
            got = session.run([OUTPUT_NAME], x)[0]
        except Exception as e:      # onnxruntime raises its own types; one line names the shape
            raise UserError(f"the ONNX export does not run at {label} ({type(e).__name__}: {str(e).splitlines()[0][:160]})",
                            "the model fixes that size (e.g. a reshape to a constant): drop that --dynamic axis "
                            "or make forward() read sizes from its input") from None
        diff = float(np.abs(got - ref).max()) if got.shape == ref.shape else float("inf")
        if diff > 1e-3 * max(1.0, float(np.abs(ref).max())):
            raise UserError(f"the ONNX export answers differently from torch at {label} (max diff {diff:.3g}, "
                            f"shapes {list(got.shape)} vs {list(ref.shape)})",
                            "the tracer froze a size of the example: drop that --dynamic axis or make forward() "
                            "read sizes from its input")
        checked.append({"shape": label, "max_abs_diff_vs_torch": diff})
    return checked
