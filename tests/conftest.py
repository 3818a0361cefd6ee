"""Shared fixtures: real Fashion-MNIST (Debian's dataset-fashion-mnist) and small slices of it."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def fmnist():
    from pipeline.data import load_fashion_mnist
    return load_fashion_mnist()


@pytest.fixture(scope="session")
def small_npz(fmnist, tmp_path_factory) -> Path:
    """A 3000/1000 slice of real Fashion-MNIST as an .npz in the `--data FILE.npz` form."""
    path = tmp_path_factory.mktemp("data") / "fmnist-small.npz"
    rng = np.random.default_rng(0)
    tr = np.sort(rng.choice(len(fmnist.x_train), 3000, replace=False))
    np.savez(path, x_train=fmnist.x_train[tr], y_train=fmnist.y_train[tr], x_test=fmnist.x_test[:1000],
             y_test=fmnist.y_test[:1000], classes=np.array(fmnist.classes), mean=np.array(fmnist.mean),
             std=np.array(fmnist.std))
    return path


def cli(*args: str, cwd: Path = ROOT, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run `python -m pipeline ...` as a user would, capturing output."""
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="session")
def run_cli():
    return cli


TARGETS = "jetson,android"   # a TensorRT bundle (QDQ ONNX, checked in ONNX Runtime) and a TFLite one
SMALL_RUN = ["--set", "distill.epochs=0.2", "--set", "distill.train_limit=1000", "--set", "evaluate.test_limit=300",
             "--set", "evaluate.runs=20", "--set", "evaluate.warmup=5", "--set", "load.latency_runs=10"]


@pytest.fixture(scope="session")
def small_run(small_npz: Path, run_cli, tmp_path_factory) -> Path:
    """A finished short run of every stage for TARGETS on a slice of real Fashion-MNIST, made once per test
    session and shared by the stage, verify and device-report tests (tests copy what they change)."""
    base = tmp_path_factory.getbasetemp() / "verify-bundle"
    run = base / "run"
    if not (run / "handoff" / "handoff.tar.gz").is_file():
        calib = base / "calib"
        r = run_cli("calibrate", "--data", str(small_npz), "--size", "128", "--name", "small-128", "--out-dir", str(calib))
        assert r.returncode == 0, r.stderr[-2000:]
        r = run_cli("run", "--target", TARGETS, "--data", str(small_npz), "--out", str(run),
                    "--set", f"quantize.calibration={calib / 'small-128'}", *SMALL_RUN, timeout=1800)
        assert r.returncode == 0, r.stderr[-4000:]
    return run


@pytest.fixture
def run_copy(small_run, tmp_path) -> Path:
    """The small run's top-level reports and its hand-off, copied so that a merge can rewrite them."""
    import shutil
    dest = tmp_path / "run"
    dest.mkdir()
    for f in ("report.json", "report.md", "report.html"):
        shutil.copyfile(small_run / f, dest / f)
    shutil.copytree(small_run / "handoff", dest / "handoff", ignore=shutil.ignore_patterns("*.tar.gz"))
    return dest


def _train_briefly(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 100,
                   one_thread: bool = True) -> torch.nn.Module:
    """Adam (lr 3e-3) on random batches of 64: enough for a small net to mean something. Seed first."""
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    threads = torch.get_num_threads()
    if one_thread:
        torch.set_num_threads(1)  # a tiny net: one thread is fastest and does not fight other jobs
    try:
        for _ in range(steps):
            idx = torch.randint(0, len(x), (64,))
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


@pytest.fixture(scope="session")
def train_briefly():
    return _train_briefly


@pytest.fixture(scope="session", autouse=True)
def repo_data_folders_untouched():
    """Tests write into temporary folders only: the committed calibration sets and baselines must come out
    of a test session as they went in (a run with quantize.calibration=auto on new data would add a set)."""
    def snapshot() -> dict[str, float]:
        return {str(p): p.stat().st_mtime for d in ("calibration", "reports") for p in (ROOT / d).rglob("*")
                if p.is_file()}
    before = snapshot()
    yield
    after = snapshot()
    assert after == before, f"tests changed committed data: {sorted(set(after.items()) ^ set(before.items()))[:4]}"


@pytest.fixture(scope="session")
def device_py(tmp_path_factory) -> Path:
    """A Python environment with only numpy and the runtimes, standing in for a device's (tests/device_env.py)."""
    from device_env import device_python
    return device_python(tmp_path_factory.mktemp("device-env") / "venv")


@pytest.fixture(scope="session")
def ssh_device(tmp_path_factory):
    """An OpenSSH server on 127.0.0.1 (a free high port, a key made for the test, the current user)."""
    from device_env import SSHD, SshServer
    if not Path(SSHD).is_file():
        pytest.skip("no sshd here: ./setup.sh --test installs openssh-server")
    server = SshServer(tmp_path_factory.mktemp("sshd")).start()
    yield server
    server.stop()
