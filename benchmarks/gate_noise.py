"""How often the interleaved latency gate cries wolf, and how often it catches a real slowdown.

    .venv/bin/python benchmarks/gate_noise.py [--runs 20] [--threads 1,2] [--rounds 60] [--burst 5] [--median]

Builds two real ONNX models: a stack of 3x3 convolutions (`--layers`, default 20, 16 channels, on
1x28x28 input) and the same stack with 15% more layers, so 15% more MACs. Their true slowdown is
measured first with a long interleaved run and printed. Then, per thread count, through the gate
itself (`pipeline.report.gate.gate` on report.json files in run folders, as CI calls it):

- false alarms: the baseline model gated against a copy of itself `--runs` times (goal: 0 fail);
- detection: the slower model gated against the baseline `--runs` times (goal: >= 19 of 20 fail),

with the jetson profile's latency budget (10% regression). With `--median` it also repeats both
with plain per-burst medians (time_interleaved(quantile=0.5)) for comparison with the gate's lower
quartile. Timing numbers depend on the machine and its load; the script prints what it measured.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.backends.onnxruntime import Runner, export_onnx  # noqa: E402
from pipeline.config import load_target  # noqa: E402
from pipeline.report import gate, schema  # noqa: E402

ARTIFACT = "jetson: INT8 QDQ ONNX (host proxy)"
WIDTH = 16


def conv_stack(layers: int) -> nn.Module:
    torch.manual_seed(0)
    mods: list[nn.Module] = [nn.Conv2d(1, WIDTH, 3, padding=1), nn.ReLU()]
    for _ in range(layers):
        mods += [nn.Conv2d(WIDTH, WIDTH, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*mods, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(WIDTH, 10))


def macs(layers: int) -> int:
    hw = 28 * 28
    return hw * 9 * WIDTH * (1 + WIDTH * layers) + WIDTH * 10


def make_run(run: Path, model: Path) -> Path:
    """A run folder with the model and a schema-valid report.json naming it (host figures left null:
    the gate times the files themselves)."""
    run.mkdir(parents=True)
    shutil.copyfile(model, run / "model.onnx")
    report = {"schema_version": schema.SCHEMA_VERSION, "created": "benchmark", "tool_version": "benchmark",
              "target": "jetson", "model": "conv-stack", "data": "synthetic", "teacher_accuracy": None,
              "test_samples": 0, "stages": {}, "stage_wall_s": {}, "targets": [], "host": {}, "toolchain": {},
              "artifacts": [{"name": ARTIFACT, "stage": "compile-jetson", "backend": "onnxruntime",
                             "precision": "fp32", "target": "jetson", "file": "model.onnx", "accuracy": None,
                             "accuracy_delta": None, "latency_p50_ms": None, "latency_p90_ms": None,
                             "latency_ci95_ms": None, "latency_where": None,
                             "size_bytes": (run / "model.onnx").stat().st_size, "params": None, "macs": None,
                             "selected": None, "note": ""}]}
    schema.validate(report)
    (run / "report.json").write_text(json.dumps(report))
    return run / "report.json"


def gate_latency(cand: Path, base: Path, rounds: int, burst: int, threads: int) -> gate.Check:
    res = gate.gate(cand, base, rounds=rounds, burst=burst, threads=threads)
    check = next(c for c in res.checks if c.kind == "latency")
    assert check.mode == "interleaved", check.message
    return check


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20, help="gates per cell of the table")
    ap.add_argument("--threads", default=str(gate.TIMING_THREADS), help="comma-separated thread counts, e.g. 1,2")
    ap.add_argument("--rounds", type=int, default=gate.DEFAULT_ROUNDS)
    ap.add_argument("--burst", type=int, default=gate.BURST)
    ap.add_argument("--layers", type=int, default=20, help="conv layers of the baseline model")
    ap.add_argument("--median", action="store_true", help="also time with plain per-burst medians, for comparison")
    a = ap.parse_args()
    slower_layers = round(a.layers * 1.15)
    pct = load_target("jetson").budgets.max_latency_regression_pct
    limit = 1 + pct / 100
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        export_onnx(conv_stack(a.layers), torch.zeros(1, 1, 28, 28), d / "base.onnx")
        export_onnx(conv_stack(slower_layers), torch.zeros(1, 1, 28, 28), d / "slow.onnx")
        base = make_run(d / "base", d / "base.onnx")
        same = make_run(d / "same", d / "base.onnx")  # another file, same bytes: a fresh session
        slow = make_run(d / "slow", d / "slow.onnx")
        x = np.zeros((1, 1, 28, 28), np.float32)
        print(f"models: {a.layers} vs {slower_layers} conv layers ({WIDTH} channels), MACs {macs(a.layers) / 1e6:.1f}M vs "
              f"{macs(slower_layers) / 1e6:.1f}M (+{(macs(slower_layers) / macs(a.layers) - 1) * 100:.1f}%); "
              f"budget: fail when the 95% CI low of the slowdown exceeds {limit:.2f}x; "
              f"{a.rounds} rounds x {a.burst} runs per gate", flush=True)
        rows = []
        for threads in [int(t) for t in a.threads.split(",")]:
            truth = gate.time_interleaved(Runner(base.parent / "model.onnx", threads=threads),
                                          Runner(slow.parent / "model.onnx", threads=threads), x, rounds=60, burst=30)
            print(f"threads {threads}: true slowdown {truth.ratio:.3f}x (95% CI {truth.ci95[0]:.3f}-{truth.ci95[1]:.3f}; "
                  f"60 rounds x 30 runs), burst lower quartiles {truth.baseline_ms:.3f} vs {truth.candidate_ms:.3f} ms",
                  flush=True)
            cells = [("lower quartile (gate)", lambda c, b: gate_latency(c, b, a.rounds, a.burst, threads))]
            if a.median:
                def by_median(c: Path, b: Path) -> gate.Check:
                    r = gate.time_interleaved(Runner(b.parent / "model.onnx", threads=threads),
                                              Runner(c.parent / "model.onnx", threads=threads), x,
                                              a.rounds, a.burst, quantile=0.5)
                    return gate.Check(ARTIFACT, "latency", "fail" if r.ci95[0] > limit else "pass",
                                      f"{r.ratio:.3f} [{r.ci95[0]:.3f}, {r.ci95[1]:.3f}]", "interleaved")
                cells.append(("median", by_median))
            for label, fn in cells:
                t0 = time.monotonic()
                false_alarms = sum(fn(same, base).status == "fail" for _ in range(a.runs))
                detected = sum(fn(slow, base).status == "fail" for _ in range(a.runs))
                rows.append((threads, label, false_alarms, detected, time.monotonic() - t0))
                print(f"threads {threads}, {label}: {false_alarms}/{a.runs} false alarms, {detected}/{a.runs} detected "
                      f"({time.monotonic() - t0:.0f}s)", flush=True)
    print()
    print(f"{'threads':>7}  {'burst statistic':22} {'false alarms (same model)':>26} {'detected (+15% MACs)':>22} {'time':>7}")
    for threads, label, fa, det, secs in rows:
        print(f"{threads:>7}  {label:22} {f'{fa}/{a.runs}':>26} {f'{det}/{a.runs}':>22} {secs:>6.0f}s")
    print(f"total {time.monotonic() - t_start:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
