"""regression: real-valued targets (N,) or (N, K), outputs of the same shape; MAE and RMSE, lower is better."""
from __future__ import annotations

import numpy as np
import torch.nn.functional as F

from pipeline.bundle.devicekit import task_metrics
from pipeline.errors import UserError
from pipeline.tasks.base import Metric, Task


class Regression(Task):
    name = "regression"
    metrics = (Metric("mae", False, "target units"), Metric("rmse", False, "target units"))

    def read_targets(self, y: np.ndarray, split: str, where: str) -> np.ndarray:
        y = np.asarray(y)
        if y.dtype.kind not in "fiu":
            raise UserError(f"{where}: y_{split} is {y.dtype}, not numbers", "store real-valued targets as float32")
        if y.ndim not in (1, 2):
            raise UserError(f"{where}: y_{split} has shape {list(y.shape)}", "store (N,) or (N, K) targets")
        y = y.astype(np.float32)
        if not np.isfinite(y).all():
            raise UserError(f"{where}: y_{split} holds NaN or inf", "drop or fix those samples")
        return y

    def _as_targets(self, outputs: np.ndarray, y: np.ndarray) -> np.ndarray:
        return outputs.reshape(len(outputs)) if y.ndim == 1 and outputs.ndim == 2 and outputs.shape[1] == 1 else outputs

    def check_outputs(self, outputs: np.ndarray, ds) -> None:
        want = list(ds.y_train.shape[1:])
        got = list(self._as_targets(outputs, ds.y_train[:len(outputs)]).shape[1:])
        if got != want:
            raise UserError(f"the model returns shape {list(outputs.shape)}; the targets are (N, {', '.join(map(str, want))})"
                            if want else f"the model returns shape {list(outputs.shape)}; the targets are (N,)",
                            "return one prediction per target value (or pass --task classification for labels)")

    def evaluate(self, outputs: np.ndarray, y: np.ndarray) -> dict[str, float]:
        return task_metrics(self.name, outputs, y)     # the bundle's device script computes the same

    def agreement(self, outputs: np.ndarray, reference: np.ndarray) -> float:
        """Share of samples whose prediction is within 5% of the reference's spread of the reference."""
        tol = 0.05 * max(float(np.std(reference)), 1e-12)
        close = np.abs(outputs - reference).reshape(len(outputs), -1).max(1) <= tol
        return float(np.mean(close))

    def distill_loss(self, student, teacher, y, temperature: float, alpha: float):
        """alpha * MSE(student, teacher) + (1 - alpha) * MSE(student, y)."""
        s = student.reshape(y.shape) if student.numel() == y.numel() else student
        t = teacher.reshape(s.shape)
        return alpha * F.mse_loss(s, t) + (1 - alpha) * F.mse_loss(s, y.to(s.dtype))
