"""classification: (N, classes) logits, integer labels 0..K-1; top-1 (and top-5) accuracy."""
from __future__ import annotations

import numpy as np
import torch.nn.functional as F

from pipeline.bundle.devicekit import task_metrics
from pipeline.data import checks
from pipeline.errors import UserError
from pipeline.tasks.base import Metric, Task


class Classification(Task):
    name = "classification"
    metrics = (Metric("top1", True, "fraction"), Metric("top5", True, "fraction"))

    def read_targets(self, y: np.ndarray, split: str, where: str) -> np.ndarray:
        """One integer class index per sample (pipeline/data/checks.py: scalar, text, float, one-hot,
        negative and absurdly large labels each get their own message)."""
        y = np.asarray(y)
        checks.check_labels(f"{where}: y_{split}", y, len(y) if y.ndim else 1)
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
        return task_metrics(self.name, outputs, y)     # the bundle's device script computes the same

    def agreement(self, outputs: np.ndarray, reference: np.ndarray) -> float:
        return float(np.mean(outputs.argmax(1) == reference.argmax(1)))

    def distill_loss(self, student, teacher, y, temperature: float, alpha: float):
        """alpha * T^2 * KL(softmax(s/T) || softmax(t/T)) + (1 - alpha) * CE(s, y)."""
        t = temperature
        soft = F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1),
                        reduction="batchmean", log_target=True) * (t * t)
        return alpha * soft + (1 - alpha) * F.cross_entropy(student, y)
