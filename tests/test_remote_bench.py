"""Bench over SSH for real (issue 22.3/22.4): an OpenSSH server on 127.0.0.1 started by the test, a device
Python holding only numpy and the runtimes, and the full loop bench -> fetch -> verify -> merge; the
failures a user meets (no runtime, unreachable host, full disk, a timeout, a dropped connection) each
end in one line naming the host; latency-budget pruning timed on the device; the gate on device figures."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT

TARGET = "android"


def bench(ssh_device, run: Path, python, *extra: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", "bench", "--remote", "edge-test", "--bundle",
                           str(run / "handoff"), "--target", TARGET, "--remote-python", str(python), "--ssh-config",
                           str(ssh_device.config), "--remote-dir", str(run.parent / "device-home"),
                           "--runs", "30", "--warmup", "3", *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def one_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and " -- fix: " in lines[0], r.stderr
    return lines[0]


def test_full_loop_bench_fetch_merge(ssh_device, device_py, run_copy):
    r = bench(ssh_device, run_copy, device_py)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "copied" in r.stdout and "steps: probe" in r.stdout and "bench " in r.stdout
    report = json.loads((run_copy / "report.json").read_text())
    t = next(x for x in report["targets"] if x["name"] == TARGET)
    d = t["device_measurement"]
    manifest = json.loads((run_copy / "handoff" / TARGET / "manifest.json").read_text())
    assert d["sha256"] == manifest["files"][manifest["deliverable"]]
    assert d["eval"]["samples"] == manifest["eval"]["samples"] and d["eval"]["difference"] is not None
    assert d["runs"] == 30 and t["measured"]["latency_p50_ms"] == d["latency_p50_ms"] > 0
    md = (run_copy / "report.md").read_text()
    assert "| figure | host | device | device − host |" in md and "labelled samples (eval.npz)" in md
    assert (run_copy / "device-reports" / f"{TARGET}.json").is_file()
    assert "host vs device" in (run_copy / "report.html").read_text()
    # the gate pointed at device figures compares the device rows
    g = subprocess.run([sys.executable, "-m", "pipeline", "gate", str(run_copy / "report.json"), "--baseline",
                        str(run_copy / "report.json"), "--target", TARGET, "--device"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert g.returncode == 0 and "(device)" in g.stdout and "device figures" in g.stdout, g.stdout + g.stderr


def test_gate_on_device_figures_needs_them(small_run):
    g = subprocess.run([sys.executable, "-m", "pipeline", "gate", str(small_run / "report.json"), "--baseline",
                        str(small_run / "report.json"), "--target", TARGET, "--device"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "no device figures" in one_line(g)


def test_missing_runtime_names_host_and_fix(ssh_device, run_copy, tmp_path):
    env = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    line = one_line(bench(ssh_device, run_copy, env / "bin" / "python"))
    assert "edge-test" in line and "cannot import numpy" in line and "--remote-python" in line
    line = one_line(bench(ssh_device, run_copy, tmp_path / "no-such-python"))
    assert "edge-test" in line and "no-such-python" in line


def test_unreachable_host(ssh_device, device_py, run_copy, tmp_path):
    cfg = tmp_path / "ssh_config"     # the same host, on a port where nothing listens
    cfg.write_text(ssh_device.config.read_text().replace(f"Port {ssh_device.port}", "Port 1"))
    r = subprocess.run([sys.executable, "-m", "pipeline", "bench", "--remote", "edge-test", "--bundle",
                        str(run_copy / "handoff"), "--target", TARGET, "--ssh-config", str(cfg)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    line = one_line(r)
    assert "edge-test" in line and "nothing accepts SSH connections" in line


def test_full_disk(ssh_device, device_py, run_copy, tmp_path):
    small = tmp_path / "small-disk"
    small.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        line = one_line(bench(ssh_device, run_copy, device_py, "--remote-dir", str(small)))
        assert "edge-test" in line and "MB free" in line and "free space on the device" in line
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_timeout(ssh_device, device_py, run_copy):
    line = one_line(bench(ssh_device, run_copy, device_py, "--runs", "100000000", "--remote-timeout", "8"))
    assert "edge-test" in line and "did not finish within 8 s" in line
    # the bench on the device stops with its session: nothing is left timing there
    assert ssh_device.survivors(f"{device_py} run_on_device.py") == []


def test_dropped_connection(ssh_device, device_py, run_copy):
    p = subprocess.Popen([sys.executable, "-m", "pipeline", "bench", "--remote", "edge-test", "--bundle",
                          str(run_copy / "handoff"), "--target", TARGET, "--remote-python", str(device_py),
                          "--ssh-config", str(ssh_device.config), "--remote-dir", str(run_copy.parent / "device-home"),
                          "--runs", "100000000"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60      # wait until the device runs the bench, then cut its session
        while time.monotonic() < deadline and not ssh_device.session_running("run_on_device.py bench"):
            time.sleep(0.2)
        assert ssh_device.drop_sessions() > 0
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    line = one_line(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    assert "edge-test" in line and "dropped" in line
    assert ssh_device.survivors(f"{device_py} run_on_device.py") == []


def test_latency_budget_pruning_on_the_device(ssh_device, device_py, tmp_path, monkeypatch):
    import torch
    from pipeline.remote import latency_on_device
    monkeypatch.setenv("EDGE_COMPRESS_SSH_CONFIG", str(ssh_device.config))
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 26 * 26, 10)).eval()
    lat = latency_on_device("edge-test", str(device_py), 1, 20, tmp_path)
    m = lat(model, torch.zeros(1, 1, 28, 28))
    assert m["where"] == "edge-test" and m["p50_ms"] > 0 and m["runs"] == 20
    assert not list(tmp_path.iterdir())       # the exported candidate is gone from the scratch folder
