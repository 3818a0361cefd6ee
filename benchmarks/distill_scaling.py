"""Distillation wall time per epoch with 1, 2, ... processes (torchrun, DistributedDataParallel), same budget.

    .venv/bin/python benchmarks/distill_scaling.py [--procs 1,2] [--device cpu] [--samples 12000]
        [--data FILE.npz] [--features]

Runs load and prune once into a temporary folder, then only the distill stage per process count: plainly
for 1 process, under `torchrun --nproc_per_node N` otherwise (gloo on CPU; on GPU nccl when every rank has
a GPU of its own, gloo when ranks share one). Prints seconds per epoch scaled to the default
57k-sample split from the training loop's own time (stage.json `train_s`: optimisation steps only), the
stage's whole wall time (teacher logits, validation and export included), the speed-up of the training
loop over the first row and the validation accuracy reached.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pipeline_cli(out: Path, procs: int, until: str, sets: list[str], data: str | None, env: dict | None = None) -> None:
    """`python -m pipeline run --target jetson --until UNTIL` into OUT (under torchrun when procs > 1)."""
    base = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_port",
            "29531", "-m"] if procs > 1 else [sys.executable, "-m"]
    cmd = base + ["pipeline", "run", "--target", "jetson", "--out", str(out), "--until", until]
    cmd += (["--data", data] if data else []) + [x for s in sets for x in ("--set", s)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if r.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", default="1,2", help="comma list of process counts")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--samples", type=int, default=12000, help="training samples of the one timed epoch")
    ap.add_argument("--data", help="FILE.npz (default: Fashion-MNIST from the Debian package)")
    ap.add_argument("--features", action="store_true", help="also distill features (auto layers)")
    ap.add_argument("--batch-size", type=int, default=128, help="global batch (split across the processes)")
    args = ap.parse_args()
    env = dict(os.environ)
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""        # torch then sees no GPU: gloo, CPU tensors
    sets = ["distill.epochs=1", f"distill.train_limit={args.samples}", f"distill.device={args.device}",
            f"distill.batch_size={args.batch_size}"]
    if args.features:
        sets.append('distill.feature_layers=["auto"]')
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        pipeline_cli(base, 1, "prune", [], args.data, env)
        for procs in map(int, args.procs.split(",")):
            run = Path(tmp) / f"p{procs}"
            run.mkdir()
            for s in ("load", "prune"):
                shutil.copytree(base / s, run / s)
            pipeline_cli(run, procs, "distill", sets, args.data, env)
            rec = json.loads((run / "distill" / "stage.json").read_text())
            m = rec["metrics"]
            per_epoch = m["train_s"] * 57000 / m["train_samples"]
            rows.append((procs, rec["wall_s"], per_epoch, m["best_val_accuracy"], m["device"], m["train_ms_per_step"]))
    print(f"\n### distill_scaling.py — {args.samples} samples, 1 epoch, batch {args.batch_size}, device {args.device}, "
          f"{os.cpu_count()} CPU cores{', with features' if args.features else ''}\n")
    print("| processes | device | ms per step | training s per 57k-sample epoch | speed-up | stage wall s | val acc |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for procs, wall, per_epoch, acc, dev, ms in rows:
        print(f"| {procs} | {dev} | {ms:.1f} | {per_epoch:.1f} | {rows[0][2] / per_epoch:.2f}x | {wall:.1f} | {acc:.4f} |")


if __name__ == "__main__":
    main()
