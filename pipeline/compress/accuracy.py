"""Top-1 accuracy of a torch model or an engine runner on raw samples (normalized in batches)."""
from __future__ import annotations

import numpy as np
import torch

from pipeline.runner import Progress


@torch.no_grad()
def torch_accuracy(model: torch.nn.Module, ds, x: np.ndarray, y: np.ndarray, batch_size: int = 256,
                   device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy of a torch model (switched to eval mode) on raw images `x`, run on `device`."""
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        logits = model(torch.from_numpy(ds.normalize(x[i:i + batch_size])).to(device))
        correct += int((logits.argmax(1).cpu().numpy() == y[i:i + batch_size]).sum())
    return correct / len(x)


def runner_accuracy(runner, ds, x: np.ndarray, y: np.ndarray, batch_size: int = 256,
                    progress: Progress | None = None) -> float:
    correct = 0
    for i in range(0, len(x), batch_size):
        logits = runner.run(ds.normalize(x[i:i + batch_size]))
        correct += int((logits.argmax(1) == y[i:i + batch_size]).sum())
        if progress:
            progress.update(min(i + batch_size, len(x)))
    return correct / len(x)
