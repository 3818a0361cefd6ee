"""What the distill stage buys, same budget for every row: the pruned student with no training, plain
fine-tune (no teacher, `distill.alpha=0`), logit KD (the default) and logit KD plus intermediate-feature
distillation through learned adapters (`distill.feature_layers=["auto"]`).

    .venv/bin/python benchmarks/distill_compare.py [--data FILE.npz] [--epochs 3] [--device auto]
        [--weights 1.0,4.0]

Runs `pipeline run --until distill` once per row into a temporary folder that shares one load/prune
result, then scores every student in torch on the whole test split (the test split is used for
nothing else). Prints test accuracy, the gap to the teacher, best validation accuracy and wall time.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline import models  # noqa: E402
from pipeline.data import resolve_data  # noqa: E402
from pipeline.compress.distill import resolve_device  # noqa: E402
from pipeline.compress.accuracy import torch_accuracy  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from distill_scaling import pipeline_cli  # noqa: E402


def run(out: Path, data: str | None, *sets: str, until: str = "distill") -> float:
    """Wall seconds of one `pipeline run` into OUT."""
    t0 = time.perf_counter()
    pipeline_cli(out, 1, until, list(sets), data)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="FILE.npz (default: Fashion-MNIST from the Debian package)")
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--weights", default="1.0", help="feature_weight values for the KD + features rows")
    ap.add_argument("--train-limit", type=int, help="distill on this many training samples only")
    a = ap.parse_args()
    ds = resolve_data(a.data)
    device = resolve_device(a.device)
    budget = [f"distill.epochs={a.epochs}", f"distill.device={a.device}"]
    if a.train_limit:
        budget.append(f"distill.train_limit={a.train_limit}")
    rows = {"fine-tune (no teacher, alpha=0)": ["distill.alpha=0"], "KD, logits only (default)": []}
    for w in a.weights.split(","):
        rows[f"KD + features (auto layers, weight {w})"] = ['distill.feature_layers=["auto"]',
                                                            f"distill.feature_weight={w}"]
    spec = models.parse_spec("default")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        run(base, a.data, until="prune")
        teacher = models.load_model(spec, base / "load" / "model.pt")
        pruned = models.load_model(spec, base / "prune" / "model.pt")
        t_acc = torch_accuracy(teacher.to(device), ds, ds.x_test, ds.y_test, device=device)
        results.append(("teacher (unpruned)", t_acc, None, None, None))
        results.append(("pruned, no training", torch_accuracy(pruned.to(device), ds, ds.x_test, ds.y_test,
                                                               device=device), None, None, None))
        for label, sets in rows.items():
            out = Path(tmp) / f"row{len(results)}"
            out.mkdir()
            for s in ("load", "prune"):
                shutil.copytree(base / s, out / s)
            wall = run(out, a.data, *budget, *sets)
            rec = json.loads((out / "distill" / "stage.json").read_text())["metrics"]
            student = models.load_model(spec, out / "distill" / "model.pt")
            acc = torch_accuracy(student.to(device), ds, ds.x_test, ds.y_test, device=device)
            results.append((label, acc, rec["best_val_accuracy"], wall, rec["device"]))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"\n### distill_compare.py — {a.epochs:g} epochs each, device {name}, test split {len(ds.y_test)}\n")
    print("| student | test accuracy | Δ pt vs teacher | best val accuracy | distill wall s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for label, acc, val, wall, _ in results:
        print(f"| {label} | {acc:.4f} | {(acc - t_acc) * 100:+.2f} | {'' if val is None else f'{val:.4f}'} | "
              f"{'' if wall is None else f'{wall:.0f}'} |")


if __name__ == "__main__":
    main()
