"""The report.json schema. CI tools read it, so its core is fixed and versioned.

Version 1.1. Top level: schema_version, created (ISO 8601 UTC), tool_version, target (comma-joined
target names), model, data, task {name, metric, metrics}, metric {name, higher_is_better, direction,
unit} (the task's primary metric: every "accuracy" figure below is this metric, in its own units),
inputs [{name, kind, dtype, shape}], dynamic ({axis: [lo, hi]} from --dynamic, or null), teacher_accuracy, test_samples, stages (name -> "ran" | "cached"),
stage_wall_s, artifacts, pruning {macs_fraction, params_fraction, macs_goal_fraction, met,
excluded_groups [{root, members, reason}]} (null without a prune stage), targets, host, toolchain. (1.0 had no task/metric: top-1 accuracy.)

artifacts[]: name, stage, backend, precision, target (null for shared artifacts), file (relative
to the run folder, null when the artifact is only built on the device), accuracy (the primary
metric; 0..1 for fractions; null where not measurable here), metrics {name: value} (every metric of
the task), accuracy_delta (vs teacher, value minus teacher: see metric.direction for its sign's
meaning), latency_p50_ms, latency_p90_ms, latency_ci95_ms
([lo, hi] of the median), latency_where ("host" or "device"; null when not measured), size_bytes,
params, macs, selected, note, and with --dynamic latency_by_shape [{shape (label, e.g. "batch=1
seq=64"), inputs {name: shape}, p50_ms, p90_ms (null where the artifact takes one fixed shape), note}].

targets[]: name, backend, precision, deliverable (artifact name), engine ("built" | "to be built on
device"), budgets {max_accuracy_drop (in the metric's units), latency_ms, max_size_mb}, measured
{accuracy_drop (how much worse than the teacher, in the metric's units; negative: better), size_mb,
latency_p50_ms (device figure, null until a device report is merged), host_latency_p50_ms},
budgets_met {accuracy, size, latency: true | false | null (not measured)}, roofline_bound_ms,
calibration {name, sha256, size, seed}, float_layers[] (layers the quantize stage kept in float; reasons
in notes), isa {target [names], host {arch, isa, int8_dot}, int8_settings {reduce_range, why} | null}
(a note says so when the host's ISA differs from the target's for INT8), notes[]. host has isa too.

Device reports (merged with `python -m pipeline report RUN_DIR --device-report FILE`)
-----------------------------------------------------------------------------------
Written on the device by `python -m pipeline bench` and by a TensorRT bundle's standalone
`build_engine.py`; both build it with pipeline.backends.tensorrt.device_report, so the schema is one.
device_report_version (1), written_by, created (ISO 8601 UTC), target (the manifest's target name),
backend, device {name, source ("/proc/device-tree/model" | "nvidia-smi" | "torch.cuda" | "/proc/cpuinfo");
both null when unknown}, runtime {name ("tensorrt" | "tflite" | "onnxruntime"), version, and for
TensorRT expected (the bundle's expected toolchain), version_match, cuda_binding; for CPU runtimes
threads}, tensorrt (version or null), artifact {file, sha256 (of the file measured: for TensorRT the
QDQ ONNX the engine was built from), manifest_sha256, matches_manifest}, engine {file, sha256,
built_here} | null, build (the TensorRT build record, {plan, skipped: true} when reused) | null,
layer_precisions {precision: layer count} | null (null where the runtime does not report it),
check {n, max_abs_err, mean_abs_err, atol, rtol, within_tolerance, top1_agreement,
min_top1_agreement, accuracy_on_golden (vs golden.npz labels; null without labels), passed},
latency_ms {n, p50, p90, p99, mean, min, max, warmup, batch, where ("device"), what}, and error (a
string, only when the run failed; check/latency_ms are then null). Written by the bundle's
run_on_device.py (and `bench`) also: isa {arch, isa [names], int8_dot} of the device's CPU, and eval
{file, sha256, samples, metric, value, metrics, host_value, host_metrics, seconds} (the task's metrics
on the bundle's labelled slice eval.npz, next to the host's on the same samples) | null.

Merging one refuses a report whose artifact sha256 is not the one in RUN_DIR/handoff/<target>/
manifest.json, whose golden check failed, or that has an error. It sets targets[].measured.
latency_p50_ms and budgets_met.latency from latency_ms.p50, adds targets[].device_measurement
{device, runtime, artifact, sha256, latency_p50_ms, latency_p90_ms, latency_p99_ms, runs,
top1_agreement_golden, accuracy_on_golden, golden_samples, layer_precisions, report_file,
report_created, written_by, isa, host_latency_p50_ms, eval {file, sha256, samples, metric, device, host,
device_metrics, host_metrics, difference (device - host)} | null} and a "device report: ..." note, and carries the figure on an artifact row
with latency_where "device": the TensorRT engine's row, or for TFLite / ONNX Runtime a new row
"<deliverable> (device)" beside the host-measured one (its accuracy is the device's figure on the eval slice, accuracy_where "device", accuracy_samples;
null for a report without eval). Only the run folder's top-level report.json/md/html are rewritten (report/ keeps the
report stage's own output, so its stage record stays valid).
"""
from __future__ import annotations

from pipeline.errors import UserError

SCHEMA_VERSION = "1.1"
# What validate accepts (1.0: before task/metric, read as top-1 accuracy); another version is refused.
SUPPORTED_VERSIONS = ("1.0", SCHEMA_VERSION)
ARTIFACT_KEYS = ("name", "stage", "backend", "accuracy", "latency_p50_ms", "size_bytes")
TOP_KEYS = ("schema_version", "created", "target", "stages", "artifacts", "targets")


def validate(report: dict) -> None:
    """Raise UserError naming the first missing or ill-typed key."""
    for k in TOP_KEYS:
        if k not in report:
            raise UserError(f"report lacks '{k}'", "regenerate it with this version of the tool")
    if report["schema_version"] not in SUPPORTED_VERSIONS:
        raise UserError(f"report schema_version {report['schema_version']!r} is not one this tool reads "
                        f"({', '.join(SUPPORTED_VERSIONS)})", "regenerate the report with this version of the tool")
    if not isinstance(report["artifacts"], list):
        raise UserError("report 'artifacts' is not a list", "regenerate the report")
    for i, a in enumerate(report["artifacts"]):
        for k in ARTIFACT_KEYS:
            if k not in a:
                raise UserError(f"report artifact {i} lacks '{k}'", "regenerate the report")
        acc = a["accuracy"]
        fraction = (report.get("metric") or {"unit": "fraction"}).get("unit") == "fraction"
        if acc is not None and fraction and not (0.0 <= acc <= 1.0):
            raise UserError(f"report artifact '{a['name']}' has accuracy {acc} outside 0..1", "regenerate the report")


def roofline_ms(macs: int | None, size_bytes: int | None, device) -> float | None:
    """Lower bound on device latency: max(compute at peak INT8 rate, weights read once at peak bandwidth)."""
    if not macs or device.peak_int8_tops is None or device.memory_bandwidth_gbs is None or size_bytes is None:
        return None
    compute_s = 2 * macs / (device.peak_int8_tops * 1e12)
    memory_s = size_bytes / (device.memory_bandwidth_gbs * 1e9)
    return max(compute_s, memory_s) * 1e3


def speed_notes(target: str, rows: list[dict]) -> list[str]:
    """A note for each backend of `target` where the INT8 artifact was not faster than its float twin
    (both measured on this host)."""
    notes = []
    timed = [r for r in rows if r.get("target") == target and r.get("latency_p50_ms") is not None]
    for backend in sorted({r["backend"] for r in timed}):
        p50 = {r["precision"]: r["latency_p50_ms"] for r in timed if r["backend"] == backend}
        if "int8" in p50 and "fp32" in p50 and p50["int8"] >= p50["fp32"]:
            notes.append(f"INT8 is not faster here: {backend} INT8 p50 {p50['int8']:.3f} ms vs FP32 "
                         f"{p50['fp32']:.3f} ms (host)")
    return notes


def quantization_notes(quant_metrics: dict) -> list[str]:
    """What the quantize stage kept in float and why, and whether its accuracy budget was met."""
    notes = []
    fb = quant_metrics.get("fallback")
    done = quant_metrics.get("depthwise_safe") or {}
    if "equalize" in done:
        notes.append(f"cross-layer equalization before INT8: {len(done['equalize']['pairs'])} layer pairs rescaled "
                     f"(exact in float)")
    if "bias_correction" in done:
        notes.append(f"bias correction before INT8: {done['bias_correction']['layers']} layers, for "
                     f"{done['bias_correction']['weights_simulated']} weights")
    if quant_metrics.get("engine_meta", {}).get("per_channel") is False:
        notes.append("INT8 weights are per-tensor (quantize.per_channel=false)")
    for f in quant_metrics.get("float_layers", []):
        notes.append(f"kept in {quant_metrics.get('float_precision', 'float')}: {f['layer']} ({f['reason']})")
    miss = int8_budget_miss(quant_metrics)
    if miss:
        notes.append(miss)
    return notes


def int8_budget_miss(quant_metrics: dict) -> str | None:
    """One line when no INT8 configuration the quantize stage tried meets its accuracy budget: the drop,
    the budget, the layers kept in float and the most sensitive layers; None when it was met."""
    if quant_metrics.get("budget_met") is not False:
        return None
    fb = quant_metrics.get("fallback")
    kept = [f["layer"] for f in quant_metrics.get("float_layers", [])]
    how = (f"with {len(fb['float_layers'])} layers in float ({', '.join(kept) or 'none'}; quantize.max_float_layers)"
           if fb else "(quantize.fallback is off)")
    ranked = ((quant_metrics.get("sensitivity") or {}).get("ranking") or [])[:3]
    worst = "; most sensitive layers: " + ", ".join(
        f"{r['layer']} (INT8 drop {r['accuracy_drop'] * 100:.2f} pt with only it in float)" for r in ranked) if ranked else ""
    held = (quant_metrics.get("heldout") or {}).get("samples")
    return (f"INT8 accuracy budget cannot be met: drop {quant_metrics['accuracy_drop_vs_float'] * 100:.2f} pt vs the "
            f"float model on {held or 'the'} held-out training samples > {quant_metrics['budget'] * 100:.2f} pt {how}"
            f"{worst}")


def target_summary(t, compile_metrics: dict, quant_metrics: dict, deliverable: dict | None,
                   teacher_acc: float | None, rows: list[dict] = (), metric=None) -> dict:
    """The report's entry for one target; `rows` (the report's artifact rows) add INT8-vs-float speed notes.
    `metric` (pipeline.tasks.Metric, default top-1) gives the direction of "drop": how much worse than the
    teacher the deliverable is, in the metric's own units (negative: better)."""
    if metric is None:
        from pipeline.tasks import Metric
        metric = Metric("top1", True, "fraction")
    b = t.budgets
    acc_drop = (None if deliverable is None or teacher_acc is None
                else metric.worse_by(teacher_acc, deliverable["accuracy"]))
    size_mb = None if deliverable is None else deliverable["size_bytes"] / 1e6
    engine = compile_metrics.get("engine", {}).get("status", "built")
    notes = []
    if engine != "built":
        notes.append(f"{t.backend} engine: to be built on device; the accuracy shown is the host-runnable form's "
                     f"({deliverable['name'] if deliverable else 'none'}), its host time is not a device latency")
    from pipeline import backends
    notes += backends.get(t.backend).report_notes(t, compile_metrics, deliverable)
    if compile_metrics.get("selection", {}).get("float_fallback"):
        notes.append(f"float fallback: {compile_metrics['selection']['reason']}")
    elif compile_metrics.get("selection", {}).get("reason"):
        notes.append(f"precision auto chose {compile_metrics['precision']}: {compile_metrics['selection']['reason']}")
    for p in compile_metrics.get("compat_problems", []):
        notes.append(f"TensorRT compatibility: {p['node']} ({p['op']}): {p['message']}")
    notes += quantization_notes(quant_metrics) + speed_notes(t.name, list(rows))
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
        "float_layers": [f["layer"] for f in quant_metrics.get("float_layers", [])],
        "notes": notes,
    }
