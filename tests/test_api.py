"""The Python API (pipeline/api.py): compress(model, data, target=...) on an in-memory nn.Module and a dict
of arrays runs the same stages as the CLI and returns the report, the deliverable and the verdict."""
from __future__ import annotations

import json

import numpy as np
import torch
from torch import nn

from pipeline import compress


class TinyNet(nn.Module):
    """Defined here, not in a file the CLI could import: only the API can hand it over."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

    def forward(self, x):
        return self.body(x)


def test_compress_an_in_memory_model(small_npz, train_briefly, tmp_path):
    arrays = dict(np.load(small_npz))
    torch.manual_seed(0)
    mean, std = float(np.ravel(arrays["mean"])[0]), float(np.ravel(arrays["std"])[0])
    x = torch.from_numpy(((arrays["x_train"][:2000] / 255.0 - mean) / std).astype(np.float32)).reshape(-1, 1, 28, 28)
    model = train_briefly(TinyNet(), x, torch.from_numpy(arrays["y_train"][:2000]).long(), steps=60)
    result = compress(model, arrays, target="x86-cpu", out=tmp_path / "run",
                      settings={"distill.epochs": 0.2, "distill.train_limit": 1000, "evaluate.test_limit": 300,
                                "evaluate.runs": 20, "evaluate.warmup": 5, "load.latency_runs": 10})
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert result.report == report and result.report_html.is_file()
    assert report["model"].endswith("model_factory.py:build") and report["test_samples"] == 300
    assert {a["stage"] for a in report["artifacts"]} >= {"load", "prune", "distill"}
    shipped = result.deliverables["x86-cpu"]
    assert shipped is not None and shipped.is_file() and shipped.suffix == ".onnx"
    assert result.verdicts[0].startswith("x86-cpu: ") and "budget" in result.verdicts[0]
