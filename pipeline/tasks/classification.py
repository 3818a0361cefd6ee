"""classification: (N, classes) logits, integer labels 0..K-1; top-1 (and top-5) accuracy."""
from __future__ import annotations

import numpy as np
import torch.nn.functional as F

from pipeline.errors import UserError
from pipeline.tasks.base import Metric, Task

MAX_CLASSES = 100_000      # more distinct labels than this is not a classification dataset (or a typo)


class Classification(Task):
    name = "classification"
    metrics = (Metric("top1", True, "fraction"), Metric("top5", True, "fraction"))

    def read_targets(self, y: np.ndarray, split: str, where: str) -> np.ndarray:
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] > 1 and np.isin(y, (0, 1)).all() and (y.sum(1) == 1).all():
            raise UserError(f"{where}: y_{split} is one-hot {list(y.shape)}",
                            "store class indices (y.argmax(1)) as integer labels 0..K-1")
        if y.ndim != 1:
            raise UserError(f"{where}: y_{split} has shape {list(y.shape)}; classification wants one integer label "
                            "per sample", "store (N,) integer labels, or pass --task regression for vector targets")
        if y.dtype.kind == "f":
            if np.isfinite(y).all() and np.all(y == np.round(y)):
                y = y.astype(np.int64)
            else:
                raise UserError(f"{where}: y_{split} holds non-integer floats (e.g. {float(y[~(y == np.round(y))][:1][0]) if np.isfinite(y).all() else 'NaN/inf'})",
                                "classification wants integer labels 0..K-1; pass --task regression for real targets")
        if y.dtype.kind not in "iub":
            raise UserError(f"{where}: y_{split} is {y.dtype}, not integer labels",
                            "store labels as integers 0..K-1 (and the names in `classes`)")
        if len(y) and y.min() < 0:
            raise UserError(f"{where}: y_{split} has negative labels (min {int(y.min())})", "labels must be 0..K-1")
        if len(y) and y.max() >= MAX_CLASSES:
            raise UserError(f"{where}: y_{split} has label {int(y.max())}, more than {MAX_CLASSES} classes",
                            "labels must be 0..K-1 class indices")
        return y.astype(np.int64)

    def check_outputs(self, outputs: np.ndarray, ds) -> None:
        shape = list(outputs.shape)
        if outputs.ndim != 2:
            raise UserError(f"the model returns shape {shape}; classification wants (N, classes) logits",
                            "return one row of class logits per input, or pass a --task that fits these outputs "
                            "(regression, or a FILE.py:NAME task plug-in)")
        if shape[1] != ds.num_classes:
            big = shape[1] > 4 * max(ds.num_classes, 1)
            raise UserError(f"the model has {shape[1]} outputs but the data has {ds.num_classes} classes",
                            "pass data with matching labels or a model with that many outputs"
                            + ("; a flattened detector or dense output is not a classifier: pass a --task that fits "
                               "its outputs (regression, or a FILE.py:NAME task plug-in)" if big else ""))

    def evaluate(self, outputs: np.ndarray, y: np.ndarray) -> dict[str, float]:
        top1 = float(np.mean(outputs.argmax(1) == y))
        k = min(5, outputs.shape[1])
        top5 = float(np.mean((np.argsort(-outputs, axis=1)[:, :k] == y[:, None]).any(1)))
        return {"top1": top1, "top5": top5}

    def agreement(self, outputs: np.ndarray, reference: np.ndarray) -> float:
        return float(np.mean(outputs.argmax(1) == reference.argmax(1)))

    def distill_loss(self, student, teacher, y, temperature: float, alpha: float):
        """alpha * T^2 * KL(softmax(s/T) || softmax(t/T)) + (1 - alpha) * CE(s, y)."""
        t = temperature
        soft = F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1),
                        reduction="batchmean", log_target=True) * (t * t)
        return alpha * soft + (1 - alpha) * F.cross_entropy(student, y)
