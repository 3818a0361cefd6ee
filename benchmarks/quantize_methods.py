"""INT8 PTQ side by side: calibration methods, accuracy-aware fallback, depthwise-safe PTQ (cross-layer
equalization and bias correction, per-channel and per-tensor weights), INT8-vs-float latency, and
calibration time vs calibration-set size.

Models: the distilled student of a finished default run (runs/default-jetson/distill/model.pt) and the
bundled MobileNet-style depthwise-separable CNN (pipeline/models/dw-separable, trained on Fashion-MNIST by
pipeline/models/train_teacher.py): after BatchNorm folding its first depthwise layer's channel ranges
differ ~100x, which is what breaks per-tensor INT8 weights. Accuracy is measured on held-out *training* samples
that are not in the calibration set (the test split stays for reports); drops are vs the same model
in float on the same samples. Backends: onnxruntime (quantize_static QDQ), tensorrt (modelopt QDQ,
run in ONNX Runtime CPU as the host proxy of its numerics), tflite (litert-torch PT2E).

    .venv/bin/python benchmarks/quantize_methods.py [--parts methods,fallback,dfq,latency,calib] [--no-trt]

Timings are host figures on a shared machine: compare rows of one run, not runs with each other.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline import models  # noqa: E402
from pipeline.compress import calibration, dfq, sensitivity  # noqa: E402
from pipeline.backends import onnxruntime as ort  # noqa: E402
from pipeline.backends import tensorrt as trt  # noqa: E402
from pipeline.backends import tflite as tfl  # noqa: E402
from pipeline.data import load_fashion_mnist  # noqa: E402
from pipeline.models.mobilenet import dw_separable  # noqa: E402
from pipeline.latency import measure  # noqa: E402
from pipeline.compress.sensitivity import onnx_layers  # noqa: E402

STUDENT = ROOT / "runs" / "default-jetson" / "distill" / "model.pt"
DW_WEIGHTS = ROOT / "pipeline" / "models" / "dw-separable" / "teacher.pt"
PARTS = ("methods", "fallback", "dfq", "latency", "calib")


# ---------------------------------------------------------------- helpers
class Bench:
    def __init__(self, ds, calib: np.ndarray, held: sensitivity.HeldOut, tmp: Path):
        self.ds, self.calib, self.held, self.tmp = ds, calib, held, tmp

    def onnx_logits(self, path: Path) -> np.ndarray:
        return ort.Runner(path, threads=2).run(self.held.x)

    def drop(self, logits: np.ndarray, reference: np.ndarray) -> float:
        return float(np.mean(reference.argmax(1) == self.held.y) - np.mean(logits.argmax(1) == self.held.y))

    def ort_q(self, onnx_in: Path, method: str, float_layers: Sequence[str] = (), calib=None,
              per_channel: bool = True) -> Path:
        out = self.tmp / f"ort-{method}.onnx"
        ort.quantize_int8(onnx_in, self.calib if calib is None else calib, out, method=method,
                          exclude_nodes=float_layers, per_channel=per_channel)
        return out

    def trt_q(self, onnx_in: Path, method: str) -> Path:
        out = self.tmp / f"trt-{method}.onnx"
        trt.quantize_int8(onnx_in, self.calib, out, method=method)
        return out

    def tfl_q(self, model: nn.Module, method: str, calib=None, per_channel: bool = True) -> Path:
        out = self.tmp / f"tfl-{method}.tflite"
        example = torch.from_numpy(self.held.x[:1])
        tfl.convert_int8(model, example, self.calib if calib is None else calib, out, io_dtype="float32",
                         method=method, per_channel=per_channel)
        return out


def table(title: str, header: Sequence[str], rows: list[Sequence]) -> None:
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in r) + " |")


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    ap.add_argument("--no-trt", action="store_true", help="skip modelopt (each run starts a ~10 s child process)")
    ap.add_argument("--heldout", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    parts = set(a.parts.split(","))
    torch.set_num_threads(2)
    ds = load_fashion_mnist()
    cal_x, manifest = calibration.load("fashion-mnist-512", ds)
    calib = ds.normalize(cal_x)
    held = sensitivity.held_out(ds, manifest["indices"], a.heldout, a.seed + 2)
    example = torch.from_numpy(held.x[:1])
    student = models.load_model(models.parse_spec("default"), STUDENT).eval()
    dw = dw_separable()
    dw.load_state_dict(torch.load(DW_WEIGHTS, weights_only=True))
    dw.eval()
    print(f"held-out: {len(held.y)} training samples outside calibration set {manifest['name']}")
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        b = Bench(ds, calib, held, tmp)
        nets = {"student (resnet)": student, "depthwise-separable": dw}
        onnx_paths, refs = {}, {}
        for name, m in nets.items():
            p = tmp / f"{name.split()[0]}.fp32.onnx"
            ort.export_onnx(m, example, p)
            onnx_paths[name], refs[name] = p, b.onnx_logits(p)
            print(f"{name}: float accuracy {np.mean(refs[name].argmax(1) == held.y):.4f} on held-out")

        if "methods" in parts:
            rows = []
            for name, m in nets.items():
                for method in ("minmax", "percentile", "entropy"):
                    q, s = timed(lambda: b.ort_q(onnx_paths[name], method))
                    rows.append((name, "onnxruntime", method, b.drop(b.onnx_logits(q), refs[name]) * 100, s))
                    if not a.no_trt and method != "percentile":
                        q, s = timed(lambda: b.trt_q(onnx_paths[name], method))
                        rows.append((name, "tensorrt (modelopt, ORT proxy)", method,
                                     b.drop(b.onnx_logits(q), refs[name]) * 100, s))
                    q, s = timed(lambda: b.tfl_q(m, method))
                    rows.append((name, "tflite", method, b.drop(tfl.Runner(q, 2).run(held.x), refs[name]) * 100, s))
            if not a.no_trt:
                rows.append(("both", "tensorrt", "percentile", "n/a: modelopt INT8 has no percentile", ""))
            table("INT8 accuracy drop vs float (pt, held-out training samples) per method",
                  ("model", "backend", "method", "drop pt", "quantize s"), rows)

        if "fallback" in parts:
            rows = []
            for name in nets:
                for per_channel in (True, False):
                    w = "per-channel" if per_channel else "per-tensor"
                    base = b.drop(b.onnx_logits(b.ort_q(onnx_paths[name], "minmax", per_channel=per_channel)),
                                  refs[name])
                    rows.append((name, w, "plain INT8 (minmax)", base * 100, "-"))

                    def q(fl: Sequence[str], n: str = name, pc: bool = per_channel) -> np.ndarray:
                        return b.onnx_logits(b.ort_q(onnx_paths[n], "minmax", fl, per_channel=pc))
                    (ranked, s) = timed(lambda: sensitivity.rank(onnx_layers(onnx_paths[name]), q, refs[name],
                                                                 held.y))
                    order = [r["layer"] for r in ranked["ranking"]]
                    for k in (1, 2, 4):
                        d = b.drop(q(order[:k]), refs[name])
                        rows.append((name, w, f"fallback: top-{k} sensitive layers float", d * 100,
                                     ", ".join(order[:k]) + f" (ranking {s:.0f} s)"))
            table("Accuracy-aware fallback, onnxruntime QDQ (drop pt vs float)",
                  ("model", "weights", "variant", "drop pt", "detail"), rows)

        if "dfq" in parts:
            rows = []
            cal_t = torch.from_numpy(calib)
            variants = (("plain", False, False), ("CLE", True, False), ("bias corr.", False, True),
                        ("CLE + bias corr.", True, True))
            for name, m in nets.items():
                for per_channel in (True, False):
                    row = [name, "per-channel" if per_channel else "per-tensor"]
                    for backend in ("onnxruntime", "tflite", "tensorrt"):
                        if backend == "tensorrt" and (a.no_trt or not per_channel):
                            continue
                        cells = []
                        for _, eq, bc in variants:
                            model = m
                            if eq or bc:
                                model, _ = dfq.prepare(m, cal_t, eq, bc, per_channel)
                            if backend == "tflite":
                                logits = tfl.Runner(b.tfl_q(model, "minmax", per_channel=per_channel), 2).run(held.x)
                            else:
                                src = tmp / "prepared.onnx"
                                ort.export_onnx(model, example, src)
                                q = b.ort_q(src, "minmax", per_channel=per_channel) if backend == "onnxruntime" \
                                    else b.trt_q(src, "minmax")
                                logits = b.onnx_logits(q)
                            cells.append(b.drop(logits, refs[name]) * 100)
                        rows.append((*row, backend, *cells))
            table("Depthwise-safe PTQ (pipeline/dfq.py): INT8 drop pt vs float, minmax calibration; tensorrt = "
                  "modelopt QDQ in ONNX Runtime (per-channel only)",
                  ("model", "weights", "backend", *(v[0] for v in variants)), rows)

        if "latency" in parts:
            rows = []
            x1 = held.x[:1]
            for name, m in nets.items():
                arts = {"onnxruntime": {"fp32": onnx_paths[name], "int8": b.ort_q(onnx_paths[name], "minmax")}}
                fp = tmp / f"{name.split()[0]}.fp32.tflite"
                tfl.convert_float(m, example, fp)
                arts["tflite"] = {"fp32": fp, "int8": b.tfl_q(m, "minmax")}
                for backend, pair in arts.items():
                    p50 = {}
                    for prec, path in pair.items():
                        r = (ort.Runner if backend == "onnxruntime" else tfl.Runner)(path, threads=2)
                        xb = r.prepare(x1)
                        p50[prec] = measure(lambda: r.run_raw(xb), warmup=20, runs=200, threads=2)["p50_ms"]
                    rows.append((name, backend, p50["fp32"], p50["int8"], p50["fp32"] / p50["int8"],
                                 "yes" if p50["int8"] < p50["fp32"] else "NO"))
            table("INT8 vs FP32 latency, batch 1, 2 threads, host (p50 ms)",
                  ("model", "backend", "fp32 p50", "int8 p50", "speed-up", "INT8 faster?"), rows)

        if "calib" in parts:
            rows = []
            for size in (128, 512, 2048):
                idx = calibration.stratified_indices(ds.y_train, size, a.seed)
                c = ds.normalize(ds.x_train[idx])
                name = "student (resnet)"
                for method in ("minmax", "entropy"):
                    q, s = timed(lambda: b.ort_q(onnx_paths[name], method, calib=c))
                    rows.append((size, "onnxruntime", method, s, b.drop(b.onnx_logits(q), refs[name]) * 100))
                q, s = timed(lambda: b.tfl_q(student, "minmax", calib=c))
                rows.append((size, "tflite", "minmax", s, b.drop(tfl.Runner(q, 2).run(held.x), refs[name]) * 100))
            table("Calibration time vs calibration-set size (student; held-out sets are disjoint from the "
                  "stored 512 set, not from these)", ("size", "backend", "method", "quantize s", "drop pt"), rows)


if __name__ == "__main__":
    main()
