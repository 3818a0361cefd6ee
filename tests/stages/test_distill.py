"""distill: KD loss, held-out validation, resume after SIGKILL, torchrun with 2 processes."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from pipeline.stages.distill import kd_loss, split_train_val

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAST = ["--set", "distill.train_limit=1024", "--set", "distill.batch_size=64", "--set", "distill.epochs=2",
        "--set", "distill.checkpoint_every=4", "--set", "evaluate.test_limit=200"]


def test_kd_loss_terms():
    s, t, y = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    assert torch.allclose(kd_loss(s, t, y, 4.0, 0.0), torch.nn.functional.cross_entropy(s, y))
    assert kd_loss(t, t, y, 4.0, 1.0).abs() < 1e-6          # student == teacher: no soft loss
    assert kd_loss(s, t, y, 4.0, 1.0) > 0


def test_split_is_disjoint_deterministic_and_never_touches_test():
    tr, val = split_train_val(1000, 0.1, None, seed=0)
    assert len(val) == 100 and len(tr) == 900 and not set(tr) & set(val)
    tr2, val2 = split_train_val(1000, 0.1, None, seed=0)
    assert np.array_equal(tr, tr2) and np.array_equal(val, val2)
    tr3, val3 = split_train_val(1000, 0.1, 200, seed=0)
    assert len(tr3) == 200 and set(tr3) <= set(tr) and set(val3) <= set(val)


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory, small_npz, run_cli):
    """A run folder with load and prune done on the small data slice (shared, copied per test)."""
    d = tmp_path_factory.mktemp("distill") / "base"
    r = run_cli("run", "--target", "jetson", "--data", str(small_npz), "--out", str(d), "--until", "prune", *FAST)
    assert r.returncode == 0, r.stderr
    return d


def _cmd(out, small_npz, *extra):
    return [sys.executable, "-m", "pipeline", "run", "--target", "jetson", "--data", str(small_npz),
            "--out", str(out), "--until", "distill", *FAST, *extra]


def test_resume_after_sigkill_matches_uninterrupted(pruned_run, small_npz, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    shutil.copytree(pruned_run, straight)
    shutil.copytree(pruned_run, killed)
    r = subprocess.run(_cmd(straight, small_npz), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr

    p = subprocess.Popen(_cmd(killed, small_npz), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not list((killed / ".resume").glob("distill-*.pt")):
        time.sleep(0.2)
    time.sleep(1.0)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert list((killed / ".resume").glob("distill-*.pt")), "no resume checkpoint was written before the kill"
    assert not (killed / "distill" / "stage.json").exists(), "killed too late: distill had finished"

    r = subprocess.run(_cmd(killed, small_npz), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "resuming from step" in r.stderr
    a = json.loads((straight / "distill" / "stage.json").read_text())
    b = json.loads((killed / "distill" / "stage.json").read_text())
    assert b["metrics"]["resumed_from_step"] > 0
    assert b["metrics"]["steps"] == a["metrics"]["steps"]
    # Same batches in the same order from the same state: the resumed student is the same student.
    assert b["metrics"]["best_val_accuracy"] == pytest.approx(a["metrics"]["best_val_accuracy"], abs=0.01)
    assert not list((killed / ".resume").glob("*.pt")), "resume checkpoint left behind after success"


def test_torchrun_two_processes(pruned_run, small_npz, tmp_path):
    out = tmp_path / "ddp"
    shutil.copytree(pruned_run, out)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "pipeline", "run", "--target", "jetson", "--data", str(small_npz), "--out", str(out),
           "--until", "distill", *FAST]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.loads((out / "distill" / "stage.json").read_text())
    assert rec["metrics"]["processes"] == 2
    assert rec["metrics"]["best_val_accuracy"] > 0.5
    assert (out / "distill" / "model.onnx").exists()
