"""Temporary files stay inside the run folder (where the next run removes them), never in the system
temp folder where a SIGKILL would leave them behind."""
from __future__ import annotations

import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
# verify has no run folder: it extracts a tarball under the system temp folder (size-capped, see verify.py)
ALLOWED = {"pipeline/verify.py"}


def test_no_temporary_folder_outside_a_given_folder():
    offenders = []
    for p in sorted((ROOT / "pipeline").rglob("*.py")):
        rel = p.relative_to(ROOT).as_posix()
        for i, line in enumerate(p.read_text().splitlines(), 1):
            if re.search(r"tempfile\.(TemporaryDirectory|mkdtemp|mkstemp|NamedTemporaryFile|TemporaryFile)\(", line) \
                    and "dir=" not in line and rel not in ALLOWED and not rel.startswith("pipeline/bundle/"):
                offenders.append(f"{rel}:{i}: {line.strip()}")
    assert not offenders, offenders


def test_prune_latency_export_is_in_the_stage_folder(tmp_path, monkeypatch):
    from pipeline.compress import prune
    seen = []
    real = prune.ort_backend.export_onnx

    def spy(model, example, path, *a, **k):
        seen.append(Path(path))
        return real(model, example, path, *a, **k)
    monkeypatch.setattr(prune.ort_backend, "export_onnx", spy)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)).eval()
    prune.onnx_latency_ms(model, torch.zeros(1, 1, 2, 2), threads=1, runs=5, scratch=tmp_path)
    assert seen and seen[0].is_relative_to(tmp_path)
    assert not list(tmp_path.iterdir())   # removed afterwards
