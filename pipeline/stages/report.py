"""report: one table of every artifact (accuracy, delta vs teacher, latency, size, params, MACs),
budgets per target, and how each stage went; `report.json` (schema in pipeline/report/schema.py)
and `report.md`."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from pipeline import __version__
from pipeline.bundle.devicekit import cpu_isa
from pipeline.isa import host_mismatch_note
from pipeline.latency import host_facts
from pipeline.report import html, render, schema
from pipeline.runner import Context, Stage, write_json


def toolchain() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for pkg in ("torch", "torch-pruning", "onnx", "onnxruntime", "nvidia-modelopt", "litert-torch",
                "ai-edge-litert", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def artifact_rows(ctx: Context) -> tuple[list[dict], float | None]:
    """The report's artifact rows from the evaluate record, and the teacher's accuracy.

    Quantized artifacts inherit params and MACs from the float model they were made from."""
    rows, teacher_acc, lineage = [], None, {}
    for r in ctx.record("evaluate")["metrics"]["results"]:
        if r["stage"] == "load":
            teacher_acc = r["accuracy"]
        if r.get("params") is not None:
            lineage = {"params": r["params"], "macs": r.get("macs")}
        acc = r["accuracy"]
        rows.append({
            "name": r["name"], "stage": r["stage"], "backend": r["backend"], "precision": r["precision"],
            "target": r.get("target"), "file": r["path"],
            "accuracy": acc, "metrics": r.get("metrics"),
            "accuracy_delta": None,
            "latency_p50_ms": r["latency_p50_ms"], "latency_p90_ms": r["latency_p90_ms"],
            "latency_ci95_ms": r["latency"]["p50_ci95_ms"] if r.get("latency") else None,
            "latency_where": "host" if r["latency_p50_ms"] is not None else None,
            "size_bytes": r["size_bytes"],
            "params": r.get("params", lineage.get("params")), "macs": r.get("macs", lineage.get("macs")),
            "selected": r.get("selected"), "note": r.get("note", ""),
            **({"device_engine": True} if r.get("device_engine") else {}),
            **({"host_proxy_of": r["host_proxy_of"]} if r.get("host_proxy_of") else {}),
            **({"latency_by_shape": r["latency_by_shape"]} if r.get("latency_by_shape") else {}),
            **{k: r[k] for k in ("per_class_ap", "examples", "pipeline_latency") if r.get(k) is not None},
        })
    for row in rows:
        if row["accuracy"] is not None and teacher_acc is not None:
            row["accuracy_delta"] = row["accuracy"] - teacher_acc     # in the metric's units; its sign: report.metric
    return rows, teacher_acc


def pruning_summary(m: dict) -> dict | None:
    """What prune did and what it left alone: MACs/params fractions, the goal, and every channel group it
    could not prune (root module, members, reason). None when the prune stage did not run."""
    if not m or "macs_fraction" not in m:
        return None
    return {"macs_fraction": m["macs_fraction"], "params_fraction": m["params_fraction"],
            "macs_goal_fraction": m.get("macs_goal_fraction"), "met": m.get("search", {}).get("met"),
            "excluded_groups": [{"root": g.get("root"), "members": g.get("modules", []), "reason": g.get("reason")}
                                for g in m.get("excluded_groups", [])]}


def deliverable(rows: list[dict], target: str, compile_metrics: dict) -> dict | None:
    """The measured row of what the target ships (for TensorRT: its host proxy, the QDQ ONNX)."""
    return next((a for a in rows if a["target"] == target and a["accuracy"] is not None
                 and a["selected"] is not False and a["file"]
                 and Path(a["file"]).name in compile_metrics["deliverables"]), None)


class ReportStage(Stage):
    name = "report"

    def __init__(self, inputs: list[str]):
        self.inputs = tuple(inputs)

    def config_slice(self, ctx: Context) -> dict:
        # Which stages ran or came from the cache is part of what the report says.
        return {"targets": [t.model_dump() for t in ctx.targets],
                "statuses": {k: v for k, v in ctx.statuses.items() if k != self.name}}

    def run(self, ctx: Context, out: Path) -> dict:
        load = ctx.record("load")["metrics"]
        artifacts, teacher_acc = artifact_rows(ctx)
        targets, host_isa = [], cpu_isa()
        for t in ctx.targets:
            comp = ctx.record(f"compile-{t.name}")["metrics"]
            quant = ctx.record(f"quantize-{t.name}")["metrics"]
            targets.append(schema.target_summary(t, comp, quant, deliverable(artifacts, t.name, comp), teacher_acc,
                                                 artifacts, metric=ctx.task.primary))
            settings = (quant.get("engine_meta") or {}).get("isa")
            targets[-1]["isa"] = {"target": list(t.device.isa), "host": host_isa,
                                  "int8_settings": None if settings is None else
                                  {"reduce_range": settings["reduce_range"], "why": settings["why"]}}
            mismatch = host_mismatch_note(t.name, list(t.device.isa), host_isa)
            if mismatch:
                targets[-1]["notes"].append(mismatch)
        stages = {name: ctx.record(name) for name in ctx.statuses if name != self.name}
        prune = stages["prune"]["metrics"] if "prune" in stages else {}
        report = {
            "schema_version": schema.SCHEMA_VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "tool_version": __version__,
            "target": ",".join(t.name for t in ctx.targets),
            "model": load["model"], "data": load["data"],
            "task": ctx.task.describe(), "metric": ctx.task.primary.as_dict(),
            "inputs": load.get("inputs"),
            "dynamic": ctx.config.dynamic or None,
            "teacher_accuracy": teacher_acc,
            "test_samples": ctx.record("evaluate")["metrics"]["test_samples"],
            "stages": dict(ctx.statuses),
            "stage_wall_s": {n: r["wall_s"] for n, r in stages.items()},
            "artifacts": artifacts,
            "pruning": pruning_summary(prune),
            "targets": targets,
            "host": {**host_facts(), "isa": host_isa},
            "toolchain": toolchain(),
        }
        report["stages"][self.name] = "ran"
        extra = ""
        if any(a.get("examples") is not None for a in artifacts):
            from pipeline.report import detection
            classes = ctx.data.classes
            report["detection_picture"] = detection.draw(out / detection.PICTURE, ctx.data.x_test.single[:4],
                                                         report, classes)
            extra = detection.html_section(report, out, classes)
        schema.validate(report)
        write_json(out / "report.json", report)
        md = render.markdown(report)
        if extra:
            md += "\n" + "\n".join(detection.markdown_lines(report, classes))
        (out / "report.md").write_text(md)
        (out / "report.html").write_text(html.html(report, extra))
        return {"artifacts_reported": len(artifacts), "budgets_met": {t["name"]: t["budgets_met"] for t in targets}}
