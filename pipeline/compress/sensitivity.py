"""Per-layer INT8 sensitivity and accuracy-aware float fallback, independent of the engine.

Everything is measured on a held-out slice of the *training* split that excludes the calibration
samples (the test split stays reserved for the report). The engine-specific part is one callable,
`Quantized`: given the layers to keep in float, it builds an INT8 artifact and returns its logits on
that slice. The quantize stage supplies one per backend.

- `rank`: for each quantizable layer, the artifact with only that layer in float; the layer whose
  float copy lowers the output error the most is the most sensitive.
- `fallback`: keep the most sensitive layers in float, one at a time, until the INT8 accuracy drop
  vs the float model is within the budget (or the allowed number of float layers is used up).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from pipeline.errors import UserError

# Builds the INT8 artifact with these layers kept in float and returns its logits on the held-out slice.
Quantized = Callable[[Sequence[str]], np.ndarray]


@dataclass(frozen=True)
class HeldOut:
    """Normalized held-out training inputs, their targets and their training-split indices."""

    x: "Inputs"
    y: np.ndarray
    indices: np.ndarray


def held_out(ds, exclude: Sequence[int], size: int, seed: int) -> HeldOut:
    """`size` training samples, never one of `exclude` (the calibration indices), drawn with `seed`."""
    pool = np.setdiff1d(np.arange(len(ds.x_train)), np.asarray(exclude, dtype=np.int64))
    if len(pool) == 0:
        raise UserError("no training samples are left outside the calibration set to measure INT8 accuracy on",
                        "use a smaller calibration set, or set quantize.sensitivity=false and quantize.fallback=false")
    idx = np.sort(np.random.default_rng(seed).choice(pool, size=min(size, len(pool)), replace=False))
    return HeldOut(ds.normalize(ds.x_train[idx]), ds.y_train[idx], idx)


def _task(task):
    if task is None:
        from pipeline.tasks import resolve
        return resolve("classification")
    return task


def score(logits: np.ndarray, reference: np.ndarray, y: np.ndarray, task=None) -> dict[str, float]:
    """The task's primary metric ("accuracy" here, whatever the metric), the task's agreement with the
    float model, and the relative output error ||logits - reference||^2 / ||reference||^2."""
    task = _task(task)
    err = float(np.sum((logits - reference) ** 2) / max(float(np.sum(reference ** 2)), 1e-12))
    return {"accuracy": task.score(logits, y), "top1_agreement": task.agreement(logits, reference),
            "output_error": err}


def rank(layers: Sequence[str], quantized: Quantized, reference: np.ndarray, y: np.ndarray,
         progress: Callable[[int], None] | None = None, task=None) -> dict:
    """Sensitivity of every layer: the INT8 model's score with only that layer left in float.

    `gain` is how much the relative output error falls when the layer stays float (the all-INT8
    error minus this one); the ranking is by gain, largest (most sensitive) first.
    """
    task = _task(task)
    base = score(quantized(()), reference, y, task)
    ref_acc = task.score(reference, y)
    rows = []
    for i, layer in enumerate(layers):
        s = score(quantized((layer,)), reference, y, task)
        rows.append({"layer": layer, **s, "accuracy_drop": task.primary.worse_by(ref_acc, s["accuracy"]),
                     "gain": base["output_error"] - s["output_error"]})
        if progress:
            progress(i + 1)
    rows.sort(key=lambda r: (-r["gain"], -r["accuracy"]))
    for i, r in enumerate(rows, 1):
        r["rank"] = i
    return {"float_accuracy": ref_acc, "all_int8": {**base, "accuracy_drop": task.primary.worse_by(ref_acc, base["accuracy"])},
            "ranking": rows}


def fallback(order: Sequence[str], quantized: Quantized, reference: np.ndarray, y: np.ndarray,
             budget: float, max_float_layers: int, all_int8: dict[str, float] | None = None, task=None,
             why: dict[str, str] | None = None) -> dict:
    """Greedy fallback: add layers from `order` (most sensitive first) to the float set until the
    accuracy drop vs `reference` is <= `budget`. `all_int8`: the `score` of the all-INT8 model if
    already measured (saves one build). The last `quantized` call is the chosen set, so the artifact
    it wrote is the one to ship. Returns the steps taken and whether the budget was met."""
    task = _task(task)
    ref_acc = task.score(reference, y)
    kept: list[str] = []
    steps = []
    while True:
        s = all_int8 if all_int8 is not None and not kept else score(quantized(tuple(kept)), reference, y, task)
        drop = task.primary.worse_by(ref_acc, s["accuracy"])
        steps.append({"float_layers": list(kept), "accuracy": s["accuracy"], "accuracy_drop": drop,
                      "output_error": s["output_error"]})
        if drop <= budget or len(kept) >= min(max_float_layers, len(order)):
            break
        kept.append(order[len(kept)])
    met = steps[-1]["accuracy_drop"] <= budget
    why = why or {}
    reasons = [f"{why.get(kept[i - 1], f'sensitivity rank {i}')}: with it in INT8 the drop was "
               f"{steps[i - 1]['accuracy_drop'] * 100:.2f} pt > budget {budget * 100:.2f} pt" for i in range(1, len(kept) + 1)]
    return {"budget": budget, "float_accuracy": ref_acc, "met": met,
            "accuracy_drop": steps[-1]["accuracy_drop"], "int8_accuracy_drop": steps[0]["accuracy_drop"],
            "float_layers": [{"layer": layer, "reason": why} for layer, why in zip(kept, reasons)],
            "steps": steps}


def onnx_layers(path: Path) -> list[str]:
    """Names of the weighted nodes (Conv, Gemm, ...) of an ONNX model, in graph order."""
    import onnx

    from pipeline.backends.onnxruntime import WEIGHTED_OPS
    return [n.name for n in onnx.load(str(path)).graph.node if n.op_type in WEIGHTED_OPS]


def torch_layers(model) -> list[str]:
    """Names of the Conv2d / Linear modules of a torch model, in definition order."""
    import torch
    return [name for name, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
