"""Where this pipeline stands against what a user would pick instead, on one model, data and host.

    .venv/bin/pip install -r benchmarks/requirements.txt      # NNCF, for its PTQ row
    .venv/bin/python benchmarks/compare_peers.py [--run runs/default-jetson+android+x86-cpu]

Rows (all measured in this one process, same test split, same latency method, 2 threads, batch 1):
- FP32 original in ONNX Runtime (the baseline every ratio refers to) and in LiteRT;
- ONNX Runtime `quantize_static` one-liner with default settings on the unpruned model;
- NNCF post-training quantization (ONNX backend, defaults) on the unpruned model;
- nvidia-modelopt INT8 PTQ alone (TensorRT-style QDQ, run in ONNX Runtime) on the unpruned model;
- torch-pruning + plain fine-tune (no teacher: the distill stage with alpha=0, same budget) + the
  same INT8 as this pipeline;
- this pipeline's output per target (from a finished run folder; made if missing).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline import backends, models  # noqa: E402
from pipeline.compress import calibration  # noqa: E402
from pipeline.data import load_fashion_mnist  # noqa: E402
from pipeline.latency import host_facts, measure  # noqa: E402
from pipeline.compress.accuracy import runner_accuracy  # noqa: E402

TARGETS = "jetson,android,x86-cpu"


def pipeline_run(out: Path, targets: str, *extra: str) -> None:
    if (out / "report" / "stage.json").exists() and not extra:
        return
    cmd = [sys.executable, "-m", "pipeline", "run", "--target", targets, "--out", str(out), *extra]
    print("$", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def row(name: str, backend: str, path: Path, ds, macs: int | None, threads: int, runs: int) -> dict:
    runner = backends.require(backend).Runner(path, threads=threads)
    acc = runner_accuracy(runner, ds, ds.x_test, ds.y_test)
    xb = runner.prepare(ds.normalize(ds.x_test[:1]))
    lat = measure(lambda: runner.run_raw(xb), warmup=50, runs=runs, threads=threads)
    print(f"  {name}: accuracy {acc:.4f}, p50 {lat['p50_ms']:.3f} ms", flush=True)
    return {"name": name, "backend": backend, "accuracy": acc, "p50_ms": lat["p50_ms"],
            "p50_ci95_ms": lat["p50_ci95_ms"], "size_bytes": path.stat().st_size, "macs": macs}


def nncf_ptq(onnx_in: Path, calib: np.ndarray, onnx_out: Path) -> str | None:
    """NNCF's PTQ with its defaults; returns why not when NNCF is missing."""
    try:
        import nncf
        import onnx
    except ImportError as e:
        return f"NNCF not installed ({e}); pip install -r benchmarks/requirements.txt"
    model = onnx.load(str(onnx_in))
    ds = nncf.Dataset(list(calib[:, None]), lambda x: {"input": x})
    q = nncf.quantize(model, ds, subset_size=len(calib))
    onnx.save(q, str(onnx_out))
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / f"default-{TARGETS.replace(',', '+')}")
    ap.add_argument("--finetune-run", type=Path, default=ROOT / "runs" / "bench-finetune-x86-cpu")
    ap.add_argument("--runs", type=int, default=300, help="timed inferences per artifact")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, help="also write the table as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()

    pipeline_run(args.run, TARGETS)
    # Same pruning and training budget, no teacher: the distill stage with the soft-target weight at 0.
    pipeline_run(args.finetune_run, "x86-cpu", "--set", "distill.alpha=0", "--until", "compile")

    ds = load_fashion_mnist()
    teacher = models.build(models.parse_spec("default"))
    example = torch.from_numpy(np.asarray(ds.normalize(ds.x_test[:1])))
    teacher_macs = models.count_macs(teacher, example)
    x_cal, _ = calibration.load("fashion-mnist-512", ds, [1, 1, 28, 28])
    calib = ds.normalize(x_cal)
    from pipeline.backends import onnxruntime as ort, tensorrt as trt, tflite as tfl
    student_macs = json.loads((args.run / "distill" / "stage.json").read_text())["metrics"]["macs"]

    rows, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fp32 = args.run / "load" / "model.onnx"
        print("measuring (test split: %d samples)" % len(ds.x_test), flush=True)
        rows.append(row("FP32 original, ONNX Runtime", "onnxruntime", fp32, ds, teacher_macs, args.threads, args.runs))
        tfl.convert_float(teacher, example, tmp / "teacher.tflite")
        rows.append(row("FP32 original, LiteRT", "tflite", tmp / "teacher.tflite", ds, teacher_macs, args.threads,
                        args.runs))

        from onnxruntime.quantization import CalibrationDataReader, quantize_static

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.it = iter(calib[:, None])

            def get_next(self):
                x = next(self.it, None)
                return None if x is None else {"input": x}

        quantize_static(str(fp32), str(tmp / "ort_oneliner.onnx"), Reader())
        rows.append(row("ORT quantize_static one-liner (defaults), unpruned", "onnxruntime",
                        tmp / "ort_oneliner.onnx", ds, teacher_macs, args.threads, args.runs))

        why = nncf_ptq(fp32, calib, tmp / "nncf.onnx")
        if why:
            notes.append(why)
        else:
            rows.append(row("NNCF PTQ (defaults), unpruned", "onnxruntime", tmp / "nncf.onnx", ds, teacher_macs,
                            args.threads, args.runs))

        trt.quantize_int8(fp32, calib, tmp / "modelopt.onnx", method="entropy")
        rows.append(row("modelopt INT8 PTQ alone (QDQ in ORT), unpruned", "onnxruntime", tmp / "modelopt.onnx", ds,
                        teacher_macs, args.threads, args.runs))

        ft = args.finetune_run / "quantize-x86-cpu" / "model.int8.onnx"
        rows.append(row("torch-pruning + plain fine-tune + same INT8 (ORT)", "onnxruntime", ft, ds, student_macs,
                        args.threads, args.runs))

        ours = [("this pipeline, x86-cpu: INT8 ONNX (ORT)", "onnxruntime", "compile-x86-cpu/model.int8.onnx"),
                ("this pipeline, x86-cpu: FP32 pruned+distilled (ORT)", "onnxruntime", "compile-x86-cpu/model.fp32.onnx"),
                ("this pipeline, android: INT8 TFLite (LiteRT)", "tflite", "compile-android/model.int8.tflite"),
                ("this pipeline, jetson: INT8 QDQ ONNX (ORT host proxy)", "onnxruntime",
                 "compile-jetson/model.int8.qdq.onnx")]
        for name, backend, rel in ours:
            rows.append(row(name, backend, args.run / rel, ds, student_macs, args.threads, args.runs))

    base = rows[0]
    print()
    print(f"# compare_peers: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, host {host_facts()['cpu']} "
          f"({host_facts()['cores']} cores, flags {','.join(host_facts()['flags'])}), {args.threads} threads, "
          f"batch 1, {args.runs} timed runs, test split {len(ds.x_test)}")
    print()
    print("| artifact | accuracy | Δ pt vs FP32 | p50 ms [95% CI] | speed-up vs FP32 ORT | size KB | smaller by | MMACs |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['name']} | {r['accuracy']:.4f} | {(r['accuracy'] - base['accuracy']) * 100:+.2f} | "
              f"{r['p50_ms']:.3f} [{r['p50_ci95_ms'][0]:.3f}, {r['p50_ci95_ms'][1]:.3f}] | "
              f"{base['p50_ms'] / r['p50_ms']:.2f}x | {r['size_bytes'] / 1024:.0f} | "
              f"{base['size_bytes'] / r['size_bytes']:.1f}x | {r['macs'] / 1e6:.2f} |")
    for n in notes:
        print(f"\nnote: {n}")
    print(f"\n(wall time {time.time() - t0:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps({"host": host_facts(), "rows": rows, "notes": notes}, indent=1))


if __name__ == "__main__":
    main()
