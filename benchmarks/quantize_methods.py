"""INT8 PTQ side by side: calibration methods, accuracy-aware fallback, cross-layer equalization
(CLE), INT8-vs-float latency, and calibration time vs calibration-set size.

Models: the distilled student of a finished default run (runs/default-jetson/distill/model.pt) and a
MobileNet-style depthwise-separable CNN trained here briefly on Fashion-MNIST (depthwise layers are
where per-tensor INT8 activations hurt most). Accuracy is measured on held-out *training* samples
that are not in the calibration set (the test split stays for reports); drops are vs the same model
in float on the same samples. Backends: onnxruntime (quantize_static QDQ), tensorrt (modelopt QDQ,
run in ONNX Runtime CPU as the host proxy of its numerics), tflite (litert-torch PT2E).

    .venv/bin/python benchmarks/quantize_methods.py [--parts methods,fallback,cle,latency,calib] [--no-trt]

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
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline import calibration, models, sensitivity  # noqa: E402
from pipeline.backends import onnxruntime as ort  # noqa: E402
from pipeline.backends import tensorrt as trt  # noqa: E402
from pipeline.backends import tflite as tfl  # noqa: E402
from pipeline.data import load_fashion_mnist  # noqa: E402
from pipeline.latency import measure  # noqa: E402
from pipeline.stages.quantize import onnx_layers  # noqa: E402

STUDENT = ROOT / "runs" / "default-jetson" / "distill" / "model.pt"
PARTS = ("methods", "fallback", "cle", "latency", "calib")


def dw_separable() -> nn.Module:
    """MobileNet-v1-style: a stem conv, three depthwise-separable blocks (dw 3x3 + pw 1x1, BN, ReLU)."""
    def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(),
                nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
    return nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         *block(16, 32, 1), *block(32, 64, 2), *block(64, 128, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10))


def train_dw(ds, steps: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = dw_separable()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = torch.from_numpy(ds.normalize(ds.x_train[:20000])), torch.from_numpy(ds.y_train[:20000])
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (128,))
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


# ---------------------------------------------------------------- cross-layer equalization (ONNX level)
def equalize_onnx(src: Path, dst: Path, iterations: int = 4) -> int:
    """Cross-layer equalization (Nagel et al. 2019) on an exported graph (BatchNorm already folded):
    for every Conv -> Relu -> Conv chain whose middle tensor has no other reader, scale output channel
    c of the first conv by 1/s_c and the matching input channel of the second by s_c, with
    s_c = sqrt(r1_c / r2_c) (r = per-channel max |weight|), so both ranges become sqrt(r1 r2).
    Exact in float because ReLU(x / s) = ReLU(x) / s for s > 0. Returns the number of pairs."""
    model = onnx.load(str(src))
    inits = {i.name: i for i in model.graph.initializer}
    readers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    producer = {o: n for n in model.graph.node for o in n.output}
    pairs = []
    for relu in (n for n in model.graph.node if n.op_type == "Relu"):
        a = producer.get(relu.input[0])
        nxt = readers.get(relu.output[0], [])
        if a is None or a.op_type != "Conv" or len(readers.get(a.output[0], [])) != 1 or len(nxt) != 1 \
                or nxt[0].op_type != "Conv" or nxt[0].input[1] not in inits or a.input[1] not in inits:
            continue
        pairs.append((a, nxt[0]))
    weights = {name: numpy_helper.to_array(t).copy() for name, t in inits.items()}
    for _ in range(iterations):
        for a, b in pairs:
            w1, w2 = weights[a.input[1]], weights[b.input[1]]
            group = next((att.i for att in b.attribute if att.name == "group"), 1)
            r1 = np.abs(w1).reshape(len(w1), -1).max(1)
            depthwise = group == w2.shape[0] and w2.shape[1] == 1 and group > 1
            r2 = np.abs(w2).reshape(len(w2), -1).max(1) if depthwise else np.abs(w2).max(axis=(0, 2, 3))
            if len(r1) != len(r2):
                continue
            s = np.where((r1 > 0) & (r2 > 0), np.sqrt(r1 / np.maximum(r2, 1e-12)), 1.0).astype(np.float32)
            w1 /= s.reshape(-1, 1, 1, 1)
            if len(a.input) > 2:
                weights[a.input[2]] /= s
            w2 *= s.reshape(-1, 1, 1, 1) if depthwise else s.reshape(1, -1, 1, 1)
    for name, t in inits.items():
        t.CopyFrom(numpy_helper.from_array(weights[name], name))
    onnx.save(model, str(dst))
    return len(pairs)


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

    def tfl_q(self, model: nn.Module, method: str, calib=None) -> Path:
        out = self.tmp / f"tfl-{method}.tflite"
        example = torch.from_numpy(self.held.x[:1])
        tfl.convert_int8(model, example, self.calib if calib is None else calib, out, io_dtype="float32",
                         method=method)
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
    ap.add_argument("--dw-steps", type=int, default=400, help="training steps of the depthwise model")
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
    dw, dw_s = timed(lambda: train_dw(ds, a.dw_steps, a.seed))
    print(f"held-out: {len(held.y)} training samples outside calibration set {manifest['name']}; "
          f"depthwise model trained {a.dw_steps} steps in {dw_s:.0f} s")
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

        if "fallback" in parts or "cle" in parts:
            rows = []
            for name in nets:
                base = b.drop(b.onnx_logits(b.ort_q(onnx_paths[name], "minmax")), refs[name])
                rows.append((name, "plain INT8 (minmax)", base * 100, "-"))
                if "fallback" in parts:
                    def q(fl: Sequence[str], n: str = name) -> np.ndarray:
                        return b.onnx_logits(b.ort_q(onnx_paths[n], "minmax", fl))
                    (ranked, s) = timed(lambda: sensitivity.rank(onnx_layers(onnx_paths[name]), q, refs[name], held.y))
                    order = [r["layer"] for r in ranked["ranking"]]
                    for k in (1, 2, 4):
                        d = b.drop(q(order[:k]), refs[name])
                        rows.append((name, f"fallback: top-{k} sensitive layers float", d * 100,
                                     ", ".join(order[:k]) + f" (ranking {s:.0f} s)"))
                if "cle" in parts:
                    eq = tmp / f"{name.split()[0]}.cle.onnx"
                    n_pairs = equalize_onnx(onnx_paths[name], eq)
                    ref_eq = b.onnx_logits(eq)
                    d = b.drop(b.onnx_logits(b.ort_q(eq, "minmax")), refs[name])
                    rows.append((name, f"CLE ({n_pairs} conv pairs) + INT8 (minmax)", d * 100,
                                 f"float max |diff| after CLE {np.abs(ref_eq - refs[name]).max():.1e}"))
                    # CLE targets per-tensor weights (one scale for all channels of a depthwise conv)
                    for label, src in (("per-tensor weights INT8", onnx_paths[name]),
                                       ("CLE + per-tensor weights INT8", eq)):
                        d = b.drop(b.onnx_logits(b.ort_q(src, "minmax", per_channel=False)), refs[name])
                        rows.append((name, label + " (minmax)", d * 100, "-"))
            table("Fallback and cross-layer equalization, onnxruntime QDQ (drop pt vs float)",
                  ("model", "variant", "drop pt", "detail"), rows)

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
