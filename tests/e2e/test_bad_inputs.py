"""Every error a user can cause: one line naming the problem and the fix, exit code 2, no traceback,
and no stage folder that looks finished."""
from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.models.resnet import small_resnet

ROOT = Path(__file__).resolve().parents[2]
FACTORY = "pipeline/models/resnet.py:small_resnet"


def assert_user_error(r: subprocess.CompletedProcess, *words: str) -> str:
    err = r.stderr.strip()
    assert r.returncode == 2, f"exit {r.returncode}: {err[-2000:]}"
    assert "Traceback" not in err, err
    last = err.splitlines()[-1]
    assert last.startswith("error: ") and " -- fix: " in last, last
    for w in words:
        assert w.lower() in last.lower(), (w, last)
    return last


def assert_nothing_done(out: Path, stages=("load", "prune", "distill")) -> None:
    for s in stages:
        rec = out / s / "stage.json"
        assert not rec.exists() or json.loads(rec.read_text())["status"] != "done" or s == "load", s
    assert not list(out.glob(".*.tmp")) if out.exists() else True


@pytest.fixture(scope="module")
def files(tmp_path_factory, fmnist):
    d = tmp_path_factory.mktemp("bad")
    good = d / "good.pt"
    torch.save(small_resnet().state_dict(), good)
    (d / "trunc.pt").write_bytes(good.read_bytes()[:5000])
    torch.save(torch.nn.Linear(3, 4).state_dict(), d / "other.pt")
    nan = small_resnet().state_dict()
    nan["fc.weight"][0, 0] = float("inf")
    torch.save(nan, d / "nan.pt")
    (d / "raises.py").write_text("def build():\n    raise RuntimeError('cannot build')\n")
    (d / "tuple.py").write_text(
        "import torch\nfrom torch import nn\n"
        "class M(nn.Module):\n    def __init__(self):\n        super().__init__(); self.f = nn.Linear(784, 10)\n"
        "    def forward(self, x):\n        y = self.f(x.flatten(1)); return y, {'aux': y}\n"
        "def build():\n    return M()\n")
    (d / "five.py").write_text(
        "import torch\ndef build():\n    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 5))\n")
    (d / "garbage.onnx").write_bytes(b"this is not an onnx file" * 10)
    (d / "bad.toml").write_text('backend = "tflite"\nround_too = 8\n[device]\nname = "x"\n')
    (d / "badtype.toml").write_text('backend = "tflite"\nthreads = "two"\n[device]\nname = "x"\n')
    x = fmnist.x_train[:200]
    np.savez(d / "rgb.npz", x_train=np.repeat(x, 3, 1), y_train=fmnist.y_train[:200],
             x_test=np.repeat(fmnist.x_test[:50], 3, 1), y_test=fmnist.y_test[:50])
    (d / "noshape.toml").write_text('backend = "onnxruntime"\n[device]\nname = "x"\n')
    (d / "notdir").write_text("a file where a folder should be")
    return d


def run(tmp_path, *args, until="load", **kw):
    cmd = [sys.executable, "-m", "pipeline", "run", "--out", str(tmp_path / "run"), *args]
    if until:
        cmd += ["--until", until]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, **kw)


@pytest.mark.parametrize("args, words", [
    (["--weights", "{d}/missing.pt"], ["weights file not found"]),
    (["--weights", "{d}/trunc.pt"], ["cannot load checkpoint", "trunc.pt"]),
    (["--weights", "{d}/other.pt"], ["does not fit", "small_resnet"]),
    (["--weights", "{d}/nan.pt"], ["fc.weight", "NaN or Inf"]),
    (["--model", "{d}/raises.py:build", "--trust-model"], ["raised RuntimeError", "cannot build"]),
    (["--model", "{d}/raises.py:build"], ["outside this repository", "--trust-model"]),
    (["--model", "{d}/tuple.py:build", "--trust-model"], ["returns a tuple"]),
    (["--model", "{d}/five.py:build", "--trust-model"], ["5 outputs", "10 classes"]),
    (["--input-shape", "1,3,32,32"], ["input shape"]),
    (["--input-shape", "pixels=1x1x28x28"], ["names 'pixels'", "inputs are input"]),
    (["--input-shape", "input=1x1x32x32"], ["input shape [1, 1, 32, 32] for 'input'"]),
    (["--dynamic", "seq=8..64"], ["no input is a (N, L) integer sequence", "NAME:AXIS"]),
    (["--dynamic", "batch=8..1"], ["--dynamic 'batch=8..1'"]),
    (["--data", "{d}/rgb.npz"], ["fails on inputs", "[1, 3, 28, 28]", "channels"]),   # targets fix no shape
    (["--data", "{d}/rgb.npz", "--target", "{d}/noshape.toml"], ["fails on input"]),
    (["--model", "{d}/garbage.onnx"], ["garbage.onnx"]),
    (["--target", "nowhere"], ["unknown target 'nowhere'"]),
    (["--target", "{d}/bad.toml"], ["unknown key 'round_too'"]),
    (["--target", "{d}/badtype.toml"], ["'threads'"]),
    (["--set", "distill.epoch=3"], ["unknown key 'distill.epoch'"]),
    (["--set", "prune.macs_reduction=most"], ["prune.macs_reduction"]),
    (["--out", "{d}/notdir/run"], ["cannot write to run folder"]),
    (["--data", "{d}/missing.npz"], ["data not found"]),
    (["--until", "everything"], ["--until everything"]),
])
def test_user_errors(files, tmp_path, args, words):
    args = [a.replace("{d}", str(files)) for a in args]
    r = run(tmp_path, *args, until=None if "--until" in args else "load")
    assert_user_error(r, *words)
    assert_nothing_done(tmp_path / "run")


@pytest.mark.parametrize("calib, words", [
    ("{c}/empty", ["empty"]),
    ("{c}/trunc", ["sha256"]),
    ("{c}/wide", ["has images"]),
    ("{c}/absent", ["not found"]),
])
def test_bad_calibration_sets(files, tmp_path, fmnist, calib, words):
    """The quantize stage refuses a bad set; the stages before it stay done, quantize does not."""
    from pipeline.compress import calibration
    from pipeline.hashing import sha256_file
    c = tmp_path / "cal"
    c.mkdir()
    np.save(c / "empty.npy", np.zeros((0, 1, 28, 28), np.uint8))
    (c / "empty.json").write_text(json.dumps({"sha256": sha256_file(c / "empty.npy"), "shape": [0, 1, 28, 28],
                                              "dtype": "uint8", "source": {}}))
    calibration.build(fmnist, 20, 0, "trunc", out_dir=c)
    (c / "trunc.npy").write_bytes((c / "trunc.npy").read_bytes()[:-64])
    wide = type(fmnist)("wide", np.zeros((20, 1, 32, 32), np.uint8), np.zeros(20, np.int64),
                        np.zeros((4, 1, 32, 32), np.uint8), np.zeros(4, np.int64), fmnist.classes, fmnist.mean,
                        fmnist.std)
    calibration.build(wide, 20, 0, "wide", out_dir=c)
    r = run(tmp_path, "--set", f"quantize.calibration={calib.replace('{c}', str(c))}", until="quantize",
            env=None)
    assert_user_error(r, *words)
    out = tmp_path / "run"
    assert not (out / "quantize-jetson").exists() and not list(out.glob(".*.tmp"))


def test_debug_shows_the_traceback(files, tmp_path):
    r = run(tmp_path, "--weights", str(files / "trunc.pt"), "--debug")
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_full_disk_while_writing(tmp_path):
    """A write that fails mid-stage (file size limit standing in for a full disk): one line, exit 2,
    the stage not marked done; the same command afterwards completes the stage."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))
    r = run(tmp_path, preexec_fn=limit)
    assert_user_error(r, "disk")
    assert not (tmp_path / "run" / "load" / "stage.json").exists()
    assert not list((tmp_path / "run").glob(".*.tmp"))
    r = run(tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "load" / "stage.json").read_text())["status"] == "done"


def test_second_run_on_the_same_folder_refuses(tmp_path):
    first = subprocess.Popen([sys.executable, "-m", "pipeline", "run", "--out", str(tmp_path / "run"),
                              "--until", "prune"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    lock = tmp_path / "run" / ".lock"
    deadline = time.time() + 120
    while time.time() < deadline and not (lock.exists() and lock.read_text().startswith("pid")):
        time.sleep(0.1)
    try:
        r = run(tmp_path, until="prune")
        assert_user_error(r, "in use by pid")
    finally:
        first.wait(timeout=300)
    assert first.returncode == 0, first.stderr.read()[-2000:]
