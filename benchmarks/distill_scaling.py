"""Distillation wall time per epoch with 1 and with 2 processes (torchrun, DDP/gloo), same budget.

    .venv/bin/python benchmarks/distill_scaling.py [--samples 12000] [--run runs/default-jetson]

Copies the load and prune stages of a finished run into temporary folders and runs only the distill
stage, once plainly and once under `torchrun --nproc_per_node 2`, then prints seconds per epoch
(scaled to the 57k-sample default split) and the speed-up.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def distill(run: Path, procs: int, samples: int) -> dict:
    base = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_port",
            "29531", "-m"] if procs > 1 else [sys.executable, "-m"]
    cmd = base + ["pipeline", "run", "--target", "jetson", "--out", str(run), "--until", "distill",
                  "--set", "distill.epochs=1", "--set", f"distill.train_limit={samples}"]
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads((run / "distill" / "stage.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "default-jetson")
    ap.add_argument("--samples", type=int, default=12000)
    args = ap.parse_args()
    rows = []
    for procs in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            run = Path(tmp) / "run"
            run.mkdir()
            for s in ("load", "prune"):
                shutil.copytree(args.run / s, run / s)
            rec = distill(run, procs, args.samples)
            per_epoch = rec["wall_s"] * 57000 / rec["metrics"]["train_samples"]
            rows.append((procs, rec["wall_s"], per_epoch, rec["metrics"]["best_val_accuracy"]))
    print(f"| processes | distill wall s ({args.samples} samples, 1 epoch) | s per 57k-sample epoch | speed-up | val acc |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for procs, wall, per_epoch, acc in rows:
        print(f"| {procs} | {wall:.1f} | {per_epoch:.0f} | {rows[0][2] / per_epoch:.2f}x | {acc:.4f} |")


if __name__ == "__main__":
    main()
