"""Detection: the default detection run's figures, and INT8 with and without the detection-aware fallback.

    .venv/bin/python benchmarks/detection.py --run runs/detect-default-jetson-android-x86-cpu [--test 1000]

Part 1 reads a finished `run --task detection` folder and prints mAP@0.5:0.95 / mAP@0.5 of every artifact
(teacher, pruned, distilled, each INT8 artifact) on the test images the run scored, host p50 of inference
and end to end (letterbox + normalize, inference, decode + NMS), size, and each stage's wall time.

Part 2 quantizes the run's teacher and its distilled student again, on the same calibration images, in
ONNX Runtime (QDQ) and LiteRT (litert-torch PT2E), once all-INT8 and once with the output tail in float
(pipeline/compress/output_tail.py: the decode after the head's last convs), and scores each on the test
images; then times, end to end on one image in LiteRT, the FP32 teacher against the INT8 student (the
"same runtime" comparison of the issue). Timings are host figures on a shared 2-core machine: compare
rows of one run, not runs with each other.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline import models  # noqa: E402
from pipeline.backends import onnxruntime as ort  # noqa: E402
from pipeline.backends import tflite as tfl  # noqa: E402
from pipeline.backends.tflite.convert import convert_float, convert_int8  # noqa: E402
from pipeline.compress.output_tail import OUTPUT_TAIL, onnx_tail  # noqa: E402
from pipeline.data.fashion_detect import dataset  # noqa: E402
from pipeline.tasks.detection import Detection  # noqa: E402


def part1(run: Path) -> None:
    r = json.loads((run / "report.json").read_text())
    print(f"## Default detection run ({r['target']}; {r['test_samples']} test images)\n")
    print("| artifact | backend | precision | mAP@0.5:0.95 | mAP@0.5 | Δ mAP pt | inference p50 ms | end-to-end p50 ms | size KB |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    proxies = {a["name"] for a in r["artifacts"] if a.get("host_proxy_of")} | {
        a["name"] for a in r["artifacts"] if any(t["name"] == a.get("target") and t["backend"] != a["backend"]
                                                   for t in r["targets"])}
    for a in r["artifacts"]:
        m, p = a.get("metrics") or {}, a.get("pipeline_latency") or {}
        proxy = a["name"] in proxies
        lat = "host proxy" if proxy else f"{a['latency_p50_ms']:.3f}" if a.get("latency_p50_ms") else "n/a"
        e2e = "host proxy" if proxy else f"{p['end_to_end_p50_ms']:.3f}" if p else "n/a"
        d = a.get("accuracy_delta")
        print(f"| {a['name']} | {a['backend']} | {a['precision']} | {m.get('map', float('nan')):.4f} | "
              f"{m.get('map50', float('nan')):.4f} | {'n/a' if d is None else format(d * 100, '+.2f')} | {lat} | {e2e} | "
              f"{(a['size_bytes'] or 0) / 1024:.1f} |")
    print("\n| stage | wall s |\n| --- | ---: |")
    for k, v in r["stage_wall_s"].items():
        print(f"| {k} | {v:.1f} |")
    print(f"| total | {sum(r['stage_wall_s'].values()):.1f} |\n")


def part2(run: Path, n_test: int) -> None:
    ds = dataset()
    task = Detection()
    task.set_classes(ds.num_classes)
    x_te, y_te = ds.normalize(ds.x_test.single[:n_test]), ds.y_test[:n_test]
    calib_path = next((run / "calibration").glob("*.npy"), None)
    calib = ds.normalize(np.load(calib_path)) if calib_path else ds.normalize(ds.x_train.single[:512])
    spec = models.parse_spec("detect-default")
    nets = {"teacher": models.build(spec), "distilled student": models.load_model(spec, run / "distill" / "model.pt").eval()}
    print(f"## INT8 with and without the output tail in float ({n_test} test images, {len(calib)} calibration images)\n")
    print("| model | engine | float | mAP@0.5:0.95 | mAP@0.5 | Δ vs its FP32 pt |")
    print("| --- | --- | --- | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        for name, net in nets.items():
            with torch.no_grad():
                ref = np.concatenate([net(torch.from_numpy(x_te[i:i + 250])).numpy() for i in range(0, len(x_te), 250)])
            base = task.evaluate(ref, y_te)
            print(f"| {name} | torch | FP32 | {base['map']:.4f} | {base['map50']:.4f} | |")
            onnx_path = d / f"{name}.onnx"
            ort.export_onnx(net, torch.from_numpy(x_te[:1]), onnx_path)
            tail, _ = onnx_tail(__import__("onnx").load(str(onnx_path)))
            ex = torch.from_numpy(x_te[:1])
            for label, exclude, float_layers in (("none (all INT8)", [], []), ("output tail", tail, [OUTPUT_TAIL])):
                q = d / f"{name}-{len(exclude)}.onnx"
                ort.quantize_int8(onnx_path, calib, q, exclude_nodes=exclude)
                m = task.evaluate(ort.Runner(q, threads=2).run(x_te), y_te)
                print(f"| {name} | onnxruntime QDQ | {label} | {m['map']:.4f} | {m['map50']:.4f} | "
                      f"{(m['map'] - base['map']) * 100:+.2f} |", flush=True)
                t = d / f"{name}-{len(exclude)}.tflite"
                with contextlib.redirect_stdout(sys.stderr):     # the converter's progress lines
                    convert_int8(net, ex, calib, t, io_dtype="float32", float_layers=float_layers)
                m = task.evaluate(tfl.Runner(t, threads=2).run(x_te), y_te)
                print(f"| {name} | LiteRT INT8 | {label} | {m['map']:.4f} | {m['map50']:.4f} | "
                      f"{(m['map'] - base['map']) * 100:+.2f} |", flush=True)
        # same runtime, end to end: FP32 teacher vs the INT8 student (output tail float) in LiteRT
        with contextlib.redirect_stdout(sys.stderr):
            convert_float(nets["teacher"], ex, d / "teacher.fp32.tflite")
        rows = {}
        for label, path in (("teacher FP32", d / "teacher.fp32.tflite"), ("student INT8", d / f"distilled student-{len(tail)}.tflite")):
            r = tfl.Runner(path, threads=2)
            rows[label] = task.pipeline_latency(lambda v, r=r: r.run_raw(r.prepare(v)), ds.x_test[:1], ds.normalize,
                                                20, 300, 2) | {"size": path.stat().st_size}
        print("\n## LiteRT end to end, batch 1, 2 threads (p50 ms)\n")
        print("| model | preprocess | inference | decode + NMS | end to end | size KB |\n| --- | ---: | ---: | ---: | ---: | ---: |")
        for label, p in rows.items():
            print(f"| {label} | {p['preprocess_p50_ms']:.3f} | {p['inference_p50_ms']:.3f} | {p['postprocess_p50_ms']:.3f} | "
                  f"{p['end_to_end_p50_ms']:.3f} | {p['size'] / 1024:.1f} |")
        a, b = rows["teacher FP32"], rows["student INT8"]
        print(f"\nend to end: {a['end_to_end_p50_ms'] / b['end_to_end_p50_ms']:.2f}x faster; inference alone "
              f"{a['inference_p50_ms'] / b['inference_p50_ms']:.2f}x; {a['size'] / b['size']:.2f}x smaller")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="a finished run --task detection folder")
    ap.add_argument("--test", type=int, default=1000, help="test images for part 2")
    ap.add_argument("--parts", default="1,2")
    a = ap.parse_args()
    if "1" in a.parts:
        part1(a.run)
    if "2" in a.parts:
        part2(a.run, a.test)


if __name__ == "__main__":
    main()
