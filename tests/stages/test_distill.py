"""distill: KD loss, feature distillation through adapters, held-out validation, resume after SIGKILL
(with feature adapters in the checkpoint), torchrun with 2 processes."""
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

from pipeline.errors import UserError
from pipeline.models.mobilenet import dw_separable
from pipeline.models.resnet import small_resnet
from pipeline.compress.distill import auto_feature_layers, kd_loss, make_adapter, split_train_val

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAST = ["--set", "distill.train_limit=1024", "--set", "distill.batch_size=64", "--set", "distill.epochs=2",
        "--set", "distill.checkpoint_every=4", "--set", "evaluate.test_limit=200"]
FEATURES = ["--set", 'distill.feature_layers=["auto"]']


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


def test_auto_feature_layers_are_the_ends_of_the_spatial_stages():
    x = torch.zeros(1, 1, 28, 28)
    assert auto_feature_layers(small_resnet(), x) == ["layers.0", "layers.1", "layers.2", "layers.3"]
    dw = dw_separable()
    names = auto_feature_layers(dw, x)
    shapes = []
    hooks = [dw.get_submodule(n).register_forward_hook(lambda _m, _i, o: shapes.append(tuple(o.shape[2:])))
             for n in names]
    dw(x)
    [h.remove() for h in hooks]
    assert shapes == [(14, 14), (7, 7)] and names == ["8", "20"]   # last ReLU at each resolution


def test_adapters_map_student_width_to_teacher_width():
    assert isinstance(make_adapter("a", torch.Size([2, 32, 7, 7]), torch.Size([2, 32, 7, 7])), torch.nn.Identity)
    conv = make_adapter("a", torch.Size([2, 24, 7, 7]), torch.Size([2, 32, 7, 7]))
    assert isinstance(conv, torch.nn.Conv2d) and conv(torch.zeros(2, 24, 7, 7)).shape == (2, 32, 7, 7)
    lin = make_adapter("tokens", torch.Size([2, 50, 96]), torch.Size([2, 50, 192]))
    assert isinstance(lin, torch.nn.Linear) and lin(torch.zeros(2, 50, 96)).shape == (2, 50, 192)
    with pytest.raises(UserError, match="differ in more than the channel count"):
        make_adapter("a", torch.Size([2, 24, 7, 7]), torch.Size([2, 32, 14, 14]))


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
    """With feature distillation and the teacher run every step, so the checkpoint holds adapters too."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    shutil.copytree(pruned_run, straight)
    shutil.copytree(pruned_run, killed)
    live = [*FEATURES, "--set", "distill.feature_cache_mb=0"]
    r = subprocess.run(_cmd(straight, small_npz, *live), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr

    p = subprocess.Popen(_cmd(killed, small_npz, *live), cwd=ROOT, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not list((killed / ".resume").glob("distill-*.pt")):
        time.sleep(0.05)
    # Kill at once: the checkpoint is written with os.replace, so once it exists it is whole, and on a
    # fast machine (a GPU) the whole stage can finish within a second of the first checkpoint.
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert list((killed / ".resume").glob("distill-*.pt")), "no resume checkpoint was written before the kill"
    assert not (killed / "distill" / "stage.json").exists(), "killed too late: distill had finished"

    r = subprocess.run(_cmd(killed, small_npz, *live), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "resuming from step" in r.stderr
    a = json.loads((straight / "distill" / "stage.json").read_text())
    b = json.loads((killed / "distill" / "stage.json").read_text())
    assert b["metrics"]["resumed_from_step"] > 0
    assert b["metrics"]["steps"] == a["metrics"]["steps"]
    assert a["metrics"]["features"]["teacher_features_cached"] is False
    assert b["metrics"]["features"]["layers"] == a["metrics"]["features"]["layers"]
    # Same batches in the same order from the same state: the resumed student is the same student.
    assert b["metrics"]["best_val_accuracy"] == pytest.approx(a["metrics"]["best_val_accuracy"], abs=0.01)
    assert not list((killed / ".resume").glob("*.pt")), "resume checkpoint left behind after success"


def test_torchrun_two_processes(pruned_run, small_npz, tmp_path):
    out = tmp_path / "ddp"
    shutil.copytree(pruned_run, out)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "pipeline", "run", "--target", "jetson", "--data", str(small_npz), "--out", str(out),
           "--until", "distill", *FAST, *FEATURES]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((out / "distill" / "stage.json").read_text())["metrics"]
    assert m["processes"] == 2 and m["device"] == "cpu"
    assert m["best_val_accuracy"] > 0.5
    assert (out / "distill" / "model.onnx").exists()
    # Feature distillation at the end of each stage; adapters where pruning narrowed the student.
    layers = m["features"]["layers"]
    assert list(layers) == ["layers.0", "layers.1", "layers.2", "layers.3"] and m["features"]["teacher_features_cached"]
    narrowed = [n for n, v in layers.items() if v["student"][0] != v["teacher"][0]]
    assert narrowed and all(layers[n]["adapter"] == "Conv2d" for n in narrowed)
    assert len(m["features"]["loss_curve"]) > 0
    # The adapters train with the student but are not shipped.
    shipped = torch.load(out / "distill" / "model.pt", weights_only=True)["state_dict"]
    pruned = torch.load(out / "prune" / "model.pt", weights_only=True)["state_dict"]
    assert shipped.keys() == pruned.keys()


def test_unknown_feature_layer_is_one_clear_error(pruned_run, small_npz, tmp_path):
    out = tmp_path / "bad"
    shutil.copytree(pruned_run, out)
    r = subprocess.run(_cmd(out, small_npz, "--set", 'distill.feature_layers=["layers.9"]'), cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "layers.9" in errors[0] and "named_modules" in errors[0]
    assert not (out / "distill" / "stage.json").exists()
