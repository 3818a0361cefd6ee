"""evaluate: accuracy on the test split and host latency of every artifact the earlier stages
declared that can execute here. What can only run on the device is listed with null figures and
the reason, never with a number."""
from __future__ import annotations

from pathlib import Path

from pipeline import backends
from pipeline.compress.accuracy import runner_outputs
from pipeline.latency import measure
from pipeline.runner import Context, Progress, Stage, log, write_json


def declared_artifacts(ctx: Context, stage_names: list[str]) -> list[dict]:
    """The artifacts each stage listed in its metrics, with their files' paths in the run folder."""
    arts = []
    for name in stage_names:
        for a in ctx.record(name)["metrics"].get("artifacts", []):
            arts.append({**a, "stage": name, "path": f"{name}/{a['file']}" if a.get("file") else None})
    return arts


class EvaluateStage(Stage):
    name = "evaluate"

    def __init__(self, inputs: list[str]):
        self.inputs = tuple(inputs)

    config_sections = ("evaluate",)

    def config_slice(self, ctx: Context) -> dict:
        return {**self.sections(ctx), "threads": {t.name: t.threads for t in ctx.targets}}

    def run(self, ctx: Context, out: Path) -> dict:
        ds, e = ctx.data, ctx.config.evaluate
        x, y = ds.x_test[: e.test_limit], ds.y_test[: e.test_limit]
        one = ctx.example()
        task = ctx.task
        threads = ctx.targets[0].threads
        results = []
        for art in declared_artifacts(ctx, list(self.inputs)):
            row = {**art, "accuracy": None, "metrics": None, "latency_p50_ms": None, "latency_p90_ms": None, "latency": None,
                   "size_bytes": (ctx.run_dir / art["path"]).stat().st_size if art["path"] else None}
            if art.get("runs_here", True):
                backend = backends.require(art["backend"])
                t = art.get("threads") or threads
                runner = backend.Runner(ctx.run_dir / art["path"], threads=t)
                prog = Progress(f"evaluate {art['name']}", len(x), unit="sample")
                row["metrics"] = task.evaluate(runner_outputs(runner, ds, x, e.batch_size, prog), y)
                row["accuracy"] = row["metrics"][task.primary.name]     # the primary metric (report.json "metric")
                xb = runner.prepare(one)
                lat = measure(lambda: runner.run_raw(xb), warmup=e.warmup, runs=e.runs, threads=t)
                row.update({"latency_p50_ms": lat["p50_ms"], "latency_p90_ms": lat["p90_ms"], "latency": lat})
                if hasattr(runner, "layout"):
                    row["layout"] = runner.layout
            results.append(row)
            acc = "n/a" if row["accuracy"] is None else f"{row['accuracy']:.4f}"
            p50 = "n/a" if row["latency_p50_ms"] is None else f"{row['latency_p50_ms']:.3f} ms"
            log.info("[evaluate] %s: %s %s, p50 %s%s", art["name"], task.primary.name, acc, p50,
                     f" ({art['note']})" if art.get("note") else "")
        # A file, so that stages reading these figures see them change in their input hashes.
        write_json(out / "results.json", [{k: v for k, v in r.items() if k != "latency"} for r in results])
        return {"test_samples": len(x), "task": task.describe(), "results": results}
