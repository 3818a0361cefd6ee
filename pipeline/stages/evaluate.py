"""evaluate: accuracy on the test split and host latency of every artifact the earlier stages
declared that can execute here. What can only run on the device is listed with null figures and
the reason, never with a number."""
from __future__ import annotations

from pathlib import Path

from pipeline import backends
from pipeline.compress.accuracy import runner_outputs
from pipeline.data.shapes import resize_to
from pipeline.latency import measure
from pipeline.runner import Context, Progress, Stage, log, write_json


def declared_artifacts(ctx: Context, stage_names: list[str]) -> list[dict]:
    """The artifacts each stage listed in its metrics, with their files' paths in the run folder."""
    arts = []
    for name in stage_names:
        for a in ctx.record(name)["metrics"].get("artifacts", []):
            arts.append({**a, "stage": name, "path": f"{name}/{a['file']}" if a.get("file") else None})
    return arts


def _shape_row(label: str, shapes: dict, lat: dict | None, note: str | None = None) -> dict:
    row = {"shape": label, "inputs": shapes, "p50_ms": lat and lat["p50_ms"], "p90_ms": lat and lat["p90_ms"]}
    if lat:
        row.update({"p50_ci95_ms": lat["p50_ci95_ms"], "runs": lat["runs"]})
    return {**row, "note": note} if note else row


def latency_by_shape(runner, arrays: dict, rows: list, e, threads: int, data_shapes: dict, lat_data: dict) -> list[dict]:
    """p50/p90 per declared shape (--dynamic) on real test samples (`arrays`, normalized) cut or repeated to
    size. An artifact with fixed shapes (TFLite, a static ONNX) has a figure at the data's shape only (its
    one latency) and rows that say so elsewhere."""
    fixed = {i["name"]: i["shape"] for i in runner.io()["inputs"]}
    accepts = getattr(runner, "accepts", None)
    out = []
    for label, shapes in rows:
        if accepts is None or not accepts(shapes):
            out.append(_shape_row(label, shapes, lat_data, "fixed shape") if shapes == data_shapes else
                       _shape_row(label, shapes, None, f"fixed input shape {fixed}"))
            continue
        feed = runner.feed(resize_to(arrays, shapes))
        lat = measure(lambda: runner.run_raw(feed), warmup=min(e.warmup, 10), runs=max(20, e.runs // 4), threads=threads)
        out.append(_shape_row(label, shapes, lat))
    log.info("[evaluate]   by shape: %s", ", ".join(f"{r['shape']} {r['p50_ms']:.3f} ms" if r["p50_ms"] is not None
                                                  else f"{r['shape']} n/a" for r in out))
    return out


class EvaluateStage(Stage):
    name = "evaluate"

    def __init__(self, inputs: list[str]):
        self.inputs = tuple(inputs)

    config_sections = ("evaluate",)

    def config_slice(self, ctx: Context) -> dict:
        return {**self.sections(ctx), "threads": {t.name: t.threads for t in ctx.targets},
                **({"dynamic": ctx.config.dynamic} if ctx.config.dynamic else {})}

    def run(self, ctx: Context, out: Path) -> dict:
        ds, e = ctx.data, ctx.config.evaluate
        x, y = ds.x_test[: e.test_limit], ds.y_test[: e.test_limit]
        one = ctx.example()
        task = ctx.task
        threads = ctx.targets[0].threads
        data_shapes = ctx.input_shapes()
        shape_rows = ctx.dynamic().latency_shapes(data_shapes)
        if shape_rows:      # real test samples for every shape row: as many as the largest batch
            largest = max(max(s[0] for s in shapes.values()) for _, shapes in shape_rows)
            shape_arrays = dict(ds.normalize(ds.x_test[:largest]).items())
        results = []
        for art in declared_artifacts(ctx, list(self.inputs)):
            row = {**art, "accuracy": None, "metrics": None, "latency_p50_ms": None, "latency_p90_ms": None, "latency": None,
                   "size_bytes": (ctx.run_dir / art["path"]).stat().st_size if art["path"] else None}
            if art.get("runs_here", True):
                backend = backends.require(art["backend"])
                t = art.get("threads") or threads
                runner = backend.Runner(ctx.run_dir / art["path"], threads=t)
                prog = Progress(f"evaluate {art['name']}", len(x), unit="sample")
                outputs = runner_outputs(runner, ds, x, e.batch_size, prog)
                row["metrics"] = task.evaluate(outputs, y)
                row["accuracy"] = row["metrics"][task.primary.name]     # the primary metric (report.json "metric")
                row.update(task.details(outputs, y))
                xb = runner.prepare(one)
                lat = measure(lambda: runner.run_raw(xb), warmup=e.warmup, runs=e.runs, threads=t)
                row.update({"latency_p50_ms": lat["p50_ms"], "latency_p90_ms": lat["p90_ms"], "latency": lat})
                steps = task.pipeline_latency(lambda v: runner.run_raw(runner.prepare(v)), x[:1], ds.normalize,
                                              min(e.warmup, 10), max(20, e.runs // 2), t)
                if steps:
                    row["pipeline_latency"] = steps
                if shape_rows:
                    row["latency_by_shape"] = latency_by_shape(runner, shape_arrays, shape_rows, e, t, data_shapes, lat)
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
