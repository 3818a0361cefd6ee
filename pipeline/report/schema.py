"""The report.json schema. CI tools read it, so its core is fixed and versioned.

Version 1.0. Top level: schema_version, created (ISO 8601 UTC), tool_version, target (comma-joined
target names), model, data, teacher_accuracy, test_samples, stages (name -> "ran" | "cached"),
stage_wall_s, artifacts, targets, host, toolchain.

artifacts[]: name, stage, backend, precision, target (null for shared artifacts), file (relative
to the run folder, null when the artifact is only built on the device), accuracy (0..1, null where
not measurable here), accuracy_delta (vs teacher), latency_p50_ms, latency_p90_ms, latency_ci95_ms
([lo, hi] of the median), latency_where ("host" or "device"; null when not measured), size_bytes,
params, macs, selected, note.

targets[]: name, backend, precision, deliverable (artifact name), engine ("built" | "to be built on
device"), budgets {max_accuracy_drop, latency_ms, max_size_mb}, measured {accuracy_drop, size_mb,
latency_p50_ms (device figure, null until a device report is merged), host_latency_p50_ms},
budgets_met {accuracy, size, latency: true | false | null (not measured)}, roofline_bound_ms,
calibration {name, sha256, size, seed}, notes[].
"""
from __future__ import annotations

from pipeline.errors import UserError

SCHEMA_VERSION = "1.0"
ARTIFACT_KEYS = ("name", "stage", "backend", "accuracy", "latency_p50_ms", "size_bytes")
TOP_KEYS = ("schema_version", "created", "target", "stages", "artifacts", "targets")


def validate(report: dict) -> None:
    """Raise UserError naming the first missing or ill-typed key."""
    for k in TOP_KEYS:
        if k not in report:
            raise UserError(f"report lacks '{k}'", "regenerate it with this version of the tool")
    if not isinstance(report["artifacts"], list):
        raise UserError("report 'artifacts' is not a list", "regenerate the report")
    for i, a in enumerate(report["artifacts"]):
        for k in ARTIFACT_KEYS:
            if k not in a:
                raise UserError(f"report artifact {i} lacks '{k}'", "regenerate the report")
        acc = a["accuracy"]
        if acc is not None and not (0.0 <= acc <= 1.0):
            raise UserError(f"report artifact '{a['name']}' has accuracy {acc} outside 0..1", "regenerate the report")


def roofline_ms(macs: int | None, size_bytes: int | None, device) -> float | None:
    """Lower bound on device latency: max(compute at peak INT8 rate, weights read once at peak bandwidth)."""
    if not macs or device.peak_int8_tops is None or device.memory_bandwidth_gbs is None or size_bytes is None:
        return None
    compute_s = 2 * macs / (device.peak_int8_tops * 1e12)
    memory_s = size_bytes / (device.memory_bandwidth_gbs * 1e9)
    return max(compute_s, memory_s) * 1e3


def target_summary(t, compile_metrics: dict, quant_metrics: dict, deliverable: dict | None,
                   teacher_acc: float | None) -> dict:
    b = t.budgets
    acc_drop = None if deliverable is None or teacher_acc is None else teacher_acc - deliverable["accuracy"]
    size_mb = None if deliverable is None else deliverable["size_bytes"] / 1e6
    engine = compile_metrics.get("engine", {}).get("status", "built")
    notes = []
    if engine != "built":
        notes.append(f"{t.backend} engine: to be built on device; accuracy and latency shown are host figures "
                     f"of the host-runnable form ({deliverable['name'] if deliverable else 'none'})")
    if compile_metrics.get("selection", {}).get("reason"):
        notes.append(f"precision auto chose {compile_metrics['precision']}: {compile_metrics['selection']['reason']}")
    for p in compile_metrics.get("compat_problems", []):
        notes.append(f"TensorRT compatibility: {p['node']} ({p['op']}): {p['message']}")
    return {
        "name": t.name, "backend": t.backend, "precision": compile_metrics.get("precision", t.precision),
        "device": t.device.name,
        "deliverable": deliverable["name"] if deliverable else None,
        "engine": engine,
        "budgets": {"max_accuracy_drop": b.max_accuracy_drop, "latency_ms": b.latency_ms, "max_size_mb": b.max_size_mb},
        "measured": {"accuracy_drop": acc_drop, "size_mb": size_mb,
                     "latency_p50_ms": None,
                     "host_latency_p50_ms": deliverable["latency_p50_ms"] if deliverable else None},
        "budgets_met": {
            "accuracy": None if acc_drop is None else acc_drop <= b.max_accuracy_drop,
            "size": None if size_mb is None or b.max_size_mb is None else size_mb <= b.max_size_mb,
            "latency": None,  # only a device figure can meet a device budget
        },
        "roofline_bound_ms": roofline_ms(deliverable.get("macs") if deliverable else None,
                                         deliverable["size_bytes"] if deliverable else None, t.device),
        "calibration": {k: quant_metrics["calibration"][k] for k in ("name", "sha256", "size", "seed")},
        "calibration_method": quant_metrics["method"],
        "notes": notes,
    }
