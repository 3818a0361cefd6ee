"""Training that blows up stops with one line, never a stage marked done with NaN weights: the
distillation loop (compress/distill.py) and the short KD between pruning steps (compress/prune.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.compress.distill import distill
from pipeline.compress.prune import short_kd
from pipeline.config import DistillConfig
from pipeline.data import Dataset
from pipeline.errors import UserError


def tiny_data() -> Dataset:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (64, 1, 4, 4), dtype=np.uint8)
    y = (np.arange(64) % 3).astype(np.int64)
    return Dataset("tiny", x, y, x[:8], y[:8], ["a", "b", "c"], (0.5,), (0.5,))


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))


def test_distill_with_a_diverging_lr_stops_with_one_line(tmp_path):
    cfg = DistillConfig(epochs=2, batch_size=16, lr=1e30, warmup_epochs=0, val_fraction=0.25)
    with pytest.raises(UserError, match="diverged") as e:
        distill(net().eval(), net(), torch.zeros(1, 1, 4, 4), tiny_data(), cfg, 0, torch.device("cpu"),
                tmp_path / "ckpt.pt")
    assert "distill.lr" in e.value.line()


def test_distill_with_a_sane_lr_still_trains(tmp_path):
    cfg = DistillConfig(epochs=1, batch_size=16, lr=0.01, warmup_epochs=0, val_fraction=0.25)
    state, _ = distill(net().eval(), net(), torch.zeros(1, 1, 4, 4), tiny_data(), cfg, 0, torch.device("cpu"),
                       tmp_path / "ckpt.pt")
    assert all(np.isfinite(state["losses"]))


def test_short_kd_with_a_diverging_lr_stops_with_one_line():
    ds = tiny_data()
    x = torch.from_numpy(np.asarray(ds.normalize(ds.x_train)))
    batches = [(x[i:i + 16], torch.from_numpy(ds.y_train[i:i + 16])) for i in range(0, 64, 16)]
    with pytest.raises(UserError, match="non-finite"):
        short_kd(net(), net().eval(), batches, 4.0, 0.7, 1e30)
