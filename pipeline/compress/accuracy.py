"""A model's outputs on raw inputs (normalized in batches), for a task to score: torch models and engine runners."""
from __future__ import annotations

import numpy as np
import torch

from pipeline.data.inputs import Inputs
from pipeline.runner import Progress


@torch.no_grad()
def torch_outputs(model: torch.nn.Module, ds, x: Inputs, batch_size: int = 256,
                  device: torch.device | str = "cpu") -> np.ndarray:
    """Outputs of a torch model (switched to eval mode) on raw inputs `x`, run on `device`."""
    model.eval()
    outs = [ds.normalize(x[i:i + batch_size]).call(model, device).float().cpu().numpy()
            for i in range(0, len(x), batch_size)]
    return np.concatenate(outs)


def runner_outputs(runner, ds, x: Inputs, batch_size: int = 256, progress: Progress | None = None) -> np.ndarray:
    """Outputs of an engine runner on raw inputs `x`."""
    outs = []
    for i in range(0, len(x), batch_size):
        outs.append(runner.run(ds.normalize(x[i:i + batch_size])))
        if progress:
            progress.update(min(i + batch_size, len(x)))
    return np.concatenate(outs)


def torch_accuracy(model: torch.nn.Module, ds, x: Inputs, y: np.ndarray, batch_size: int = 256,
                   device: torch.device | str = "cpu", task=None) -> float:
    """The task's primary metric (default: top-1 accuracy) of a torch model on raw inputs."""
    from pipeline.tasks import resolve
    return (task or resolve("classification")).score(torch_outputs(model, ds, x, batch_size, device), y)


def runner_accuracy(runner, ds, x: Inputs, y: np.ndarray, batch_size: int = 256, progress: Progress | None = None,
                    task=None) -> float:
    """The task's primary metric (default: top-1 accuracy) of an engine runner on raw inputs."""
    from pipeline.tasks import resolve
    return (task or resolve("classification")).score(runner_outputs(runner, ds, x, batch_size, progress), y)
