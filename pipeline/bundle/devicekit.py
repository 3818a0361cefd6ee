"""What a device needs to check and time a deliverable and write a device report: standard library and
numpy only. Shipped verbatim in hand-off bundles (next to hashing.py), and used by `python -m pipeline
bench`, so the device and the build host compute the same figures with the same code."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

try:
    from pipeline.hashing import sha256_file
except ImportError:          # inside a hand-off bundle: hashing.py sits next to this file
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from hashing import sha256_file

REPORT_VERSION = 1


def latency_stats(times_ms: list[float]) -> dict:
    """p50/p90/p99/mean/min/max of a list of latencies in ms."""
    t = np.asarray(times_ms, dtype=np.float64)
    return {"n": int(t.size), "p50": float(np.percentile(t, 50)), "p90": float(np.percentile(t, 90)),
            "p99": float(np.percentile(t, 99)), "mean": float(t.mean()), "min": float(t.min()), "max": float(t.max())}


def device_name(gpu: bool) -> dict:
    """{"name", "source"} of this machine: the device tree (Jetson, Raspberry Pi); for GPU work nvidia-smi
    or torch.cuda; otherwise the CPU model in /proc/cpuinfo. name and source are None when nothing tells."""
    tree = Path("/proc/device-tree/model")
    if tree.is_file():
        name = tree.read_bytes().rstrip(b"\x00").decode(errors="replace").strip()
        if name:
            return {"name": name, "source": str(tree)}
    if gpu:
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=30, check=False)
            names = [line.strip() for line in out.stdout.splitlines() if line.strip()]
            if out.returncode == 0 and names:
                return {"name": names[0], "source": "nvidia-smi"}
        except (OSError, subprocess.TimeoutExpired):
            pass
        try:
            import torch
            if torch.cuda.is_available():
                return {"name": torch.cuda.get_device_name(0), "source": "torch.cuda"}
        except ImportError:
            pass
        return {"name": None, "source": None}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model") and value.strip():
                return {"name": value.strip(), "source": "/proc/cpuinfo"}
    except OSError:
        pass
    return {"name": None, "source": None}


def device_report(written_by: str, artifact: str | Path, runtime: dict, gpu: bool) -> dict:
    """A device report (schema: pipeline/report/schema.py) holding what is known before any work: who
    wrote it, the target (from the manifest.json beside the artifact), this device, the runtime, and the
    artifact's sha256 beside the one its manifest lists. The caller fills in engine, build,
    layer_precisions, check, latency_ms and eval (None until measured), or error; isa is this CPU's."""
    from datetime import datetime, timezone

    artifact = Path(artifact)
    manifest_path = artifact.parent / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    listed = manifest.get("files", {}).get(artifact.name)
    sha = sha256_file(artifact) if artifact.is_file() else None
    return {"device_report_version": REPORT_VERSION, "written_by": written_by,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "target": manifest.get("target"), "backend": manifest.get("backend"),
            "device": device_name(gpu), "runtime": runtime,
            "tensorrt": runtime["version"] if gpu else None,     # a GPU report comes from a TensorRT engine
            "artifact": {"file": artifact.name, "sha256": sha, "manifest_sha256": listed,
                         "matches_manifest": None if listed is None or sha is None else listed == sha},
            "engine": None, "build": None, "layer_precisions": None, "check": None, "latency_ms": None,
            "isa": cpu_isa(), "eval": None}


def golden_check(out: np.ndarray, y: np.ndarray, labels: np.ndarray | None, atol: float, rtol: float,
                 min_top1_agreement: float, boxes: np.ndarray | None = None, detection: dict | None = None) -> dict:
    """Outputs `out` for the golden inputs against the expected outputs `y` (and the labels, when given).
    A detector (`detection`: the manifest's section, `boxes`: golden.npz's boxes) is checked on its boxes."""
    if detection is not None and boxes is not None:
        return golden_boxes_check(out, y, boxes, detection)
    y = np.asarray(y, dtype=np.float32)
    err = np.abs(out - y)
    agreement = float((out.argmax(1) == y.argmax(1)).mean())
    within = bool(np.all(err <= atol + rtol * np.abs(y)))
    return {"n": int(len(y)), "max_abs_err": float(err.max()), "mean_abs_err": float(err.mean()),
            "atol": atol, "rtol": rtol, "within_tolerance": within,
            "top1_agreement": agreement, "min_top1_agreement": min_top1_agreement,
            "accuracy_on_golden": None if labels is None else float((out.argmax(1) == labels).mean()),
            "passed": within and agreement >= min_top1_agreement}


GOLDEN_BOX_IOU = 0.5       # a golden box is found again when a box of its class overlaps it by this much
GOLDEN_BOX_MATCH = 0.95    # share of golden boxes (and of boxes found) that must match: INT8 kernels of
                           # another CPU may move a borderline score across the threshold


def _decode(out: np.ndarray, det: dict) -> list[np.ndarray]:
    try:
        from pipeline.bundle.postprocess import detect
    except ImportError:        # inside a hand-off bundle
        from postprocess import detect
    return detect(out, det["output_layout"], det["conf_threshold"], det["iou_threshold"], det["max_detections"],
                  multi_label=False)


def golden_boxes_check(out: np.ndarray, y: np.ndarray, boxes: np.ndarray, det: dict) -> dict:
    """Detections decoded from `out` (postprocess.py, the manifest's thresholds) against the golden boxes
    (N, K, 6: x1, y1, x2, y2, score, class; class -1 pads): a box matches one of the same class at IoU >=
    GOLDEN_BOX_IOU, greedily; passes when both ways at least GOLDEN_BOX_MATCH of the boxes match."""
    try:
        from pipeline.bundle.postprocess import iou_matrix
    except ImportError:
        from postprocess import iou_matrix
    found = _decode(out, det)
    matched = total_gold = total_found = 0
    min_iou = 1.0
    for d, g in zip(found, np.asarray(boxes, np.float32)):
        g = g[g[:, 5] >= 0]
        total_gold, total_found = total_gold + len(g), total_found + len(d)
        if not len(g) or not len(d):
            continue
        iou = iou_matrix(g[:, :4], d[:, :4]) * (g[:, None, 5] == d[None, :, 5])
        used = set()
        for i in np.argsort(-iou.max(1)):
            j = int(iou[i].argmax())
            if iou[i, j] >= GOLDEN_BOX_IOU and j not in used:
                used.add(j)
                matched += 1
                min_iou = min(min_iou, float(iou[i, j]))
    recall = matched / total_gold if total_gold else 1.0
    precision = matched / total_found if total_found else 1.0
    err = np.abs(np.asarray(out, np.float32) - np.asarray(y, np.float32))
    return {"n": int(len(boxes)), "boxes": total_gold, "found": total_found, "matched": matched,
            "box_recall": recall, "box_precision": precision, "min_matched_iou": min_iou if matched else None,
            "min_match": GOLDEN_BOX_MATCH, "iou": GOLDEN_BOX_IOU,
            "max_abs_err": float(err.max()), "mean_abs_err": float(err.mean()),
            "top1_agreement": min(recall, precision), "min_top1_agreement": GOLDEN_BOX_MATCH,
            "passed": recall >= GOLDEN_BOX_MATCH and precision >= GOLDEN_BOX_MATCH}


def device_latency(times_ms: list[float], warmup: int, batch: int, what: str) -> dict:
    """The device report's latency_ms: p50/p90/p99/mean/min/max of the timed runs, measured where="device"."""
    return {**latency_stats(times_ms), "warmup": warmup, "batch": batch, "where": "device", "what": what}


def golden_inputs(golden) -> "np.ndarray | dict[str, np.ndarray]":
    """The inputs of an opened golden.npz: `x` (one input) or {name: array} from `x__<name>` arrays."""
    if "x" in golden.files:
        return golden["x"].astype(np.float32) if golden["x"].dtype.kind == "f" else golden["x"]
    return {k[3:]: golden[k] for k in golden.files if k.startswith("x__")}


# ---------------------------------------------------------------- instruction sets (ISA-aware INT8)
# /proc/cpuinfo flag -> the name targets use (targets/*.toml [device] isa). x86: VNNI (AVX512-VNNI or
# AVX-VNNI) does u8 x s8 multiply-adds into int32 without the 16-bit intermediate that pmaddubsw
# saturates on AVX2; ARM: dot-product (sdot/udot) and i8mm (smmla) int8 instructions.
ISA_FLAGS = {"avx2": "avx2", "avx512f": "avx512", "avx512_vnni": "avx512_vnni", "avx_vnni": "avx_vnni",
             "amx_int8": "amx_int8", "asimd": "neon", "asimddp": "dotprod", "i8mm": "i8mm", "sve": "sve"}
VNNI = ("avx512_vnni", "avx_vnni", "amx_int8")


def cpu_isa(cpuinfo: str | None = None) -> dict:
    """{"arch", "isa": [names], "int8_dot": bool} of this CPU from /proc/cpuinfo (or the text given)."""
    import platform
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    isa = sorted({name for flag, name in ISA_FLAGS.items() if flag in flags})
    arch = platform.machine() or None
    if "neon" in isa or arch in ("aarch64", "arm64"):
        arch = "aarch64"
    elif "avx2" in isa or arch in ("x86_64", "AMD64"):
        arch = "x86_64"
    return {"arch": arch, "isa": isa, "int8_dot": any(n in isa for n in (*VNNI, "dotprod", "i8mm"))}


# ---------------------------------------------------------------- the task's metrics, numpy only
CLASSIFICATION_TASKS = ("classification", "text-classification")   # (N, classes) logits, integer labels


def task_metrics(task: str, outputs: np.ndarray, y: np.ndarray) -> dict | None:
    """The metrics of the built-in tasks (classification: top1/top5; regression: mae/rmse), as the
    pipeline's tasks compute them; None for a plug-in task (its code is not in the bundle)."""
    outputs = np.asarray(outputs, dtype=np.float32)
    if task in CLASSIFICATION_TASKS:
        k = min(5, outputs.shape[1])
        return {"top1": float(np.mean(outputs.argmax(1) == y)),
                "top5": float(np.mean((np.argsort(-outputs, axis=1)[:, :k] == y[:, None]).any(1)))}
    if task == "regression":
        if y.ndim == 1 and outputs.ndim == 2 and outputs.shape[1] == 1:
            outputs = outputs.reshape(len(outputs))
        err = outputs.astype(np.float64) - y
        return {"mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(np.mean(err ** 2)))}
    return None
