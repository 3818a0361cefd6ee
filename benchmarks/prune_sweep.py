"""Accuracy and host latency of the default model after pruning + distillation, per criterion and budget.

    .venv/bin/python benchmarks/prune_sweep.py [--reductions 0.3,0.5,0.7] [--criteria l1,l2,bn_scale,taylor,lamp]
        [--epochs 1] [--train-limit 20000] [--test-limit 10000] [--target jetson] [--global-pruning]
        [--latency-runs 200] [--threads 2] [--keep DIR]

For each (criterion, MACs reduction) it runs the pipeline's own prune and distill stages (the stage
code, the target's round_to) into a temporary run folder that shares one load stage, then measures
test accuracy of the distilled student in ONNX Runtime FP32 and its host latency (ORT FP32, batch 1,
p50 of `--latency-runs`), with ratios to the unpruned teacher measured in the same run. The
distillation budget (epochs, training samples) is a flag and is printed with the table: short
budgets understate what a full distillation recovers. Timings depend on the host and its load.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.backends.onnxruntime import Runner  # noqa: E402
from pipeline.config import RunConfig, load_target  # noqa: E402
from pipeline.data import resolve_data  # noqa: E402
from pipeline.latency import host_facts, measure  # noqa: E402
from pipeline.runner import Context, run_stage  # noqa: E402
from pipeline.stages.distill import DistillStage  # noqa: E402
from pipeline.compress.accuracy import runner_accuracy  # noqa: E402
from pipeline.stages.load import LoadStage  # noqa: E402
from pipeline.stages.prune import PruneStage  # noqa: E402


def onnx_figures(path: Path, ds, test_limit: int, threads: int, runs: int) -> tuple[float, float]:
    """(test accuracy, p50 ms) of an FP32 ONNX model in ONNX Runtime."""
    runner = Runner(path, threads=threads)
    acc = runner_accuracy(runner, ds, ds.x_test[:test_limit], ds.y_test[:test_limit])
    xb = runner.prepare(ds.normalize(ds.x_test[:1]))
    return acc, measure(lambda: runner.run_raw(xb), warmup=20, runs=runs, threads=threads)["p50_ms"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reductions", default="0.3,0.5,0.7", help="MACs fractions to remove")
    ap.add_argument("--criteria", default="l1,l2,bn_scale,taylor,lamp")
    ap.add_argument("--epochs", type=float, default=1.0, help="distillation epochs per student")
    ap.add_argument("--train-limit", type=int, default=20000, help="distillation training samples")
    ap.add_argument("--test-limit", type=int, default=10000, help="test samples for accuracy")
    ap.add_argument("--target", default="jetson", help="target profile (its round_to is used)")
    ap.add_argument("--global-pruning", action="store_true", help="global allocation (prune.global_pruning)")
    ap.add_argument("--max-layer-ratio", type=float, default=1.0, help="prune.max_layer_ratio")
    ap.add_argument("--latency-runs", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep", help="keep the run folders under this directory")
    a = ap.parse_args()

    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="prune-sweep-"))
    work.mkdir(parents=True, exist_ok=True)
    target = load_target(a.target)
    ds = resolve_data("fashion-mnist")
    test_limit = min(a.test_limit, len(ds.x_test))

    def config(reduction: float, criterion: str) -> RunConfig:
        cfg = RunConfig()
        cfg.prune.macs_reduction, cfg.prune.criterion = reduction, criterion
        cfg.prune.global_pruning, cfg.prune.max_layer_ratio = a.global_pruning, a.max_layer_ratio
        cfg.distill.epochs, cfg.distill.train_limit = a.epochs, a.train_limit
        return cfg

    base_dir = work / "teacher"
    run_stage(LoadStage(), Context(base_dir, RunConfig(), [target], lambda: ds))
    t_acc, t_lat = onnx_figures(base_dir / "load" / "model.onnx", ds, test_limit, a.threads, a.latency_runs)

    rows = []
    for reduction in [float(r) for r in a.reductions.split(",")]:
        for criterion in a.criteria.split(","):
            run_dir = work / f"{criterion}-{reduction:.2f}"
            if not (run_dir / "load").exists():
                shutil.copytree(base_dir / "load", run_dir / "load")
            ctx = Context(run_dir, config(reduction, criterion), [target], lambda: ds)
            t0 = time.perf_counter()
            prune = run_stage(PruneStage(), ctx)["metrics"]
            run_stage(DistillStage(), ctx)
            acc, lat = onnx_figures(run_dir / "distill" / "model.onnx", ds, test_limit, a.threads, a.latency_runs)
            rows.append((criterion, reduction, prune["macs_fraction"], prune["params_fraction"], acc, lat,
                         time.perf_counter() - t0))
            print(f"  done {criterion} -{reduction:.0%} MACs in {rows[-1][-1]:.0f} s", flush=True)

    h = host_facts()
    print(f"\nhost: {h['cpu']}, {h['cores']} cores; ORT FP32 batch 1, {a.threads} threads, p50 of {a.latency_runs}")
    print(f"prune: target {a.target} (round_to {target.round_to}), "
          f"{'global' if a.global_pruning else 'uniform'} allocation, max_layer_ratio {a.max_layer_ratio}")
    print(f"distill: {a.epochs:g} epoch(s) on {a.train_limit} training samples; accuracy on {test_limit} test samples")
    print(f"teacher: accuracy {t_acc:.4f}, p50 {t_lat:.3f} ms\n")
    print("| criterion | MACs removed (goal) | MACs kept | params kept | accuracy | Δ acc vs teacher | p50 ms | p50 / teacher | wall s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for crit, red, macs_f, params_f, acc, lat, wall in rows:
        print(f"| {crit} | {red:.0%} | {macs_f:.3f} | {params_f:.3f} | {acc:.4f} | {acc - t_acc:+.4f} | "
              f"{lat:.3f} | {lat / t_lat:.2f} | {wall:.0f} |")
    if not a.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
