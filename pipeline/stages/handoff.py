"""handoff: the folder and tarball the embedded team receives, one sub-folder per target.

Each holds the deliverable artifact(s), `manifest.json` (how to feed the model, what comes out,
quantization parameters, sha256 of every file, the toolchain lock, calibration set and seed),
`golden.npz` (inputs and the host outputs to check a device build against) and a README for the
embedded engineer. No absolute paths of the build machine are written anywhere.
"""
from __future__ import annotations

import gzip
import io
import platform
import shutil
import tarfile
from pathlib import Path

import numpy as np

from pipeline import __version__, backends
from pipeline.bundle.devicekit import CLASSIFICATION_TASKS
from pipeline.errors import UserError
from pipeline.hashing import sha256_file
from pipeline.runner import Context, Stage, read_json, write_json
from pipeline.stages.handoff_docs import (MODEL_CARD, README, RUNTIME, budgets_lines, kit_fingerprint,
                                          quantization_lines, write_device_kit, write_eval_slice)
from pipeline.stages.report import artifact_rows, deliverable, toolchain

GOLDEN_SAMPLES = 16
def golden_arrays(x) -> dict:
    """The golden inputs as npz arrays: `x` for a single input, `x__<name>` per named input."""
    if x.positional:
        return {"x": x.single}
    return {f"x__{k}": v for k, v in x.items()}


def tensor_entry(meta: dict | None, name: str, shape: list[int], layout: str | None) -> dict:
    """How to feed / read one model tensor, from the engine's own description where it has one."""
    meta = meta or {}
    entry = {"name": meta.get("name", name), "shape": meta.get("shape", shape), "dtype": meta.get("dtype", "float32")}
    if layout:
        entry["layout"] = layout
    entry["quantization"] = ({"scale": meta["scale"], "zero_point": meta["zero_point"]}
                             if "scale" in meta else None)
    return entry


def deterministic_tar(src: Path, names: list[str], dest: Path) -> None:
    """A .tar.gz of src/<name> folders whose bytes depend only on the files' names and contents."""
    buf = io.BytesIO()
    paths = sorted(p for n in names for p in [src / n, *(src / n).rglob("*")])
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for p in paths:
            info = tar.gettarinfo(str(p), arcname=str(Path("handoff") / p.relative_to(src)))
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            info.mode = 0o755 if p.is_dir() or p.suffix in (".sh", ".py") else 0o644
            if p.is_file():
                with open(p, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    with open(dest, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        gz.write(buf.getvalue())


def ship_tokenizer(tok: dict | None, tdir: Path) -> dict | None:
    """Text models: the tokenizer file the data was tokenized with goes into the bundle, and the manifest
    says how to use it (sha256, maximum length, padding side, template)."""
    if not tok:
        return None
    src = Path(tok["file"])
    if sha256_file(src) != tok["sha256"]:
        raise UserError(f"the tokenizer {src} changed since the data was tokenized", "run again with --force")
    shutil.copyfile(src, tdir / "tokenizer.json")
    return {**{k: v for k, v in tok.items() if k != "file"}, "file": "tokenizer.json"}


def manifest_inputs(data_inputs: list[dict], runtime: list[dict], dyn) -> list[dict]:
    """Every input as the data and the deliverable see it: name, kind, dtype and per-sample shape, the
    runtime tensor (its shape with null for a dynamic dim; int32 ids where the engine needs them), and
    for each dim the deliverable leaves dynamic its declared range (--dynamic); a fixed-shape engine
    (TFLite) keeps the data's shape, and says so."""
    out = []
    for i, e in zip(data_inputs, runtime):
        axes = {str(a.axis): {"symbol": a.symbol, "min": a.lo, "max": a.hi} for a in dyn.axes
                if a.input == i["name"] and a.axis < len(e["shape"]) and e["shape"][a.axis] is None}
        entry = {**i, "runtime": e}
        if axes:
            entry["dynamic_axes"] = axes
        elif dyn and any(a.input == i["name"] for a in dyn.axes):
            entry["fixed_shape"] = "this engine takes one fixed shape (the runtime shape); --dynamic applies to ONNX/TensorRT"
        out.append(entry)
    return out


def photo_steps(data_info: dict) -> dict:
    """How photos were decoded (preprocess.load_image: preset, resize, crop, colour order), for image folders."""
    pre = data_info.get("preprocessing") or {}
    return {k: pre[k] for k in ("preset", "resize", "crop", "color", "interpolation") if k in pre}


class HandoffStage(Stage):
    name = "handoff"

    def __init__(self, inputs: list[str]):
        self.inputs = tuple(inputs)

    def config_slice(self, ctx: Context) -> dict:
        return {"targets": [t.name for t in ctx.targets], "golden": GOLDEN_SAMPLES,
                "eval_samples": ctx.config.handoff.eval_samples, "kit": kit_fingerprint(),
                **({"dynamic": ctx.config.dynamic} if ctx.config.dynamic else {})}

    def run(self, ctx: Context, out: Path) -> dict:
        ds = ctx.data
        data_info = read_json(ctx.artifact("load", "data.json"))
        rows, _ = artifact_rows(ctx)
        load = ctx.record("load")["metrics"]
        test_samples = ctx.record("evaluate")["metrics"]["test_samples"]
        bundle = out
        lock = {**toolchain(), "python": platform.python_version(), "edge-compress": __version__}
        x = ds.normalize(ds.x_test[:GOLDEN_SAMPLES])
        dyn = ctx.dynamic()
        summary = {}
        for t in ctx.targets:
            comp_name, quant_name = f"compile-{t.name}", f"quantize-{t.name}"
            comp, quant = ctx.record(comp_name)["metrics"], ctx.record(quant_name)["metrics"]
            tdir = bundle / t.name
            tdir.mkdir(parents=True)
            for f in comp["deliverables"]:
                shutil.copyfile(ctx.artifact(comp_name, f), tdir / f)
            art = deliverable(rows, t.name, comp)
            engine = backends.get(t.backend)
            runner = backends.require(art["backend"]).Runner(ctx.run_dir / art["file"], threads=t.threads)
            y = runner.run(x)
            np.savez(tdir / "golden.npz", **golden_arrays(x), y=y, labels=ds.y_test[:GOLDEN_SAMPLES],
                     **ctx.task.golden_extra(y))
            task_section = ctx.task.manifest_section(ds)
            eval_slice = write_eval_slice(tdir, ds, ctx.config.handoff.eval_samples, runner, ctx.task)
            write_device_kit(tdir, t.backend)
            (tdir / "MODEL_CARD.md").write_text(model_card(ctx, t, art, quant, load, data_info, test_samples))
            tokenizer = ship_tokenizer(ds.meta.get("tokenizer"), tdir)
            tol = engine.golden_tolerance(t, quant["engine_meta"].get("output") or {}).as_dict()
            meta = quant["engine_meta"]
            files = {p.name: sha256_file(p) for p in sorted(tdir.iterdir())}
            manifest = {
                "manifest_version": 1,
                "target": t.name, "device": t.device.name, "backend": t.backend,
                "deliverable": art["file"].split("/")[-1], "precision": comp.get("precision", t.precision),
                "threads": t.threads, "budgets": t.budgets.model_dump(), "isa": list(t.device.isa),
                "input": tensor_entry(meta.get("input"), "input", data_info["input_shape"],
                                      getattr(runner, "layout", "NCHW")),
                "inputs": manifest_inputs(data_info.get("inputs", []), runner.io()["inputs"], dyn),
                "task": data_info.get("task"),
                "output": tensor_entry(meta.get("output"), "logits" if task_section is None else "outputs",
                                       [data_info["input_shape"][0], len(data_info["classes"])] if task_section is None
                                       else [data_info["input_shape"][0], *y.shape[1:]], None),
                **({ctx.task.name: task_section} if task_section else {}),
                "preprocessing": {"scale": 1 / 255 if data_info["stored_dtype"] == "uint8" else 1.0,
                                  "mean": data_info["mean"], "std": data_info["std"],
                                  "input_chw": list(data_info["input_shape"][1:]),
                                  "formula": "x = (pixel * scale - mean) / std", "code": "preprocess.py",
                                  **photo_steps(data_info)},
                "eval": eval_slice,
                "labels": data_info["classes"],
                **({"tokenizer": tokenizer} if tokenizer else {}),
                "opset": meta.get("opset"),
                "float_layers": meta.get("float_layers", []),
                "float_layers_why": {f["layer"]: f["reason"] for f in quant.get("float_layers", [])},
                "calibration": {k: quant["calibration"][k] for k in ("name", "sha256", "size", "seed")},
                "seed": ctx.config.seed, "accuracy_host": art["accuracy"], "test_samples": test_samples,
                "golden": {"file": "golden.npz", "samples": GOLDEN_SAMPLES, "produced_by": art["name"],
                           "inputs": list(golden_arrays(x)), **tol},
                "toolchain": lock,
                "device_toolchain": engine.device_toolchain(t),
                "engine": comp.get("engine", {}).get("status", "built"),
                "files": files,
            }
            write_json(tdir / "manifest.json", manifest)
            notes = engine.bundle_notes(t, comp)
            q_in, q_out = manifest["input"]["quantization"], manifest["output"]["quantization"]
            (tdir / "README.md").write_text(README.format(
                model=load["model"], device=t.device.name, target=t.name, version=__version__,
                runtime=RUNTIME.get(t.backend, t.backend),
                eval_n=eval_slice["samples"] if eval_slice else 0,
                cpp="\n    # C++ (TensorRT): infer.cpp, build line at its top" if t.backend == "tensorrt" else "",
                budgets=budgets_lines(t),
                input_name=manifest["input"]["name"], input_dtype=manifest["input"]["dtype"],
                input_shape=manifest["input"]["shape"], layout=manifest["input"]["layout"],
                preprocessing=(f"pixel / 255, then (x - mean) / std with mean {data_info['mean']}, std {data_info['std']}"
                               if data_info["stored_dtype"] == "uint8" else
                               f"(x - mean) / std with mean {data_info['mean']}, std {data_info['std']} for images; "
                               "other inputs as stored"),
                quant_in=f"; then quantize: q = round(x / {q_in['scale']}) + {q_in['zero_point']}" if q_in else "",
                output_name=manifest["output"]["name"], output_dtype=manifest["output"]["dtype"],
                output_shape=manifest["output"]["shape"],
                output_meaning=("logits for the labels in `manifest.json` (argmax = class)"
                                if ctx.task.name in CLASSIFICATION_TASKS else
                                "raw detector outputs (layout, strides and thresholds in `manifest.json` "
                                "`detection`); `postprocess.py` decodes them and runs NMS (numpy only)"
                                if ctx.task.name == "detection" else f"the {ctx.task.name} task's outputs"),
                quant_out=f"; dequantize: (q - {q_out['zero_point']}) * {q_out['scale']}" if q_out else "",
                quantization=quantization_lines(t.backend, quant, quant.get("float_layers", [])),
                files="\n".join(f"- `{n}`" for n in files) + "\n- `manifest.json`\n- `README.md`",
                metric=ctx.task.primary.name, accuracy=f"{art['accuracy']:.4f}", samples=test_samples,
                eval_line=(f"on the {eval_slice['samples']} samples of `eval.npz` {eval_slice['host_value']:.4f} "
                           "(the device's `bench` measures the same)" if eval_slice else "no evaluation slice shipped "
                           "(handoff.eval_samples=0)"),
                golden=GOLDEN_SAMPLES, backend_notes=notes))
            summary[t.name] = {"files": sorted(files), "deliverable": manifest["deliverable"]}
        deterministic_tar(bundle, [t.name for t in ctx.targets], out / "handoff.tar.gz")
        return {"targets": summary}


def model_card(ctx: Context, t, art: dict, quant: dict, load: dict, data_info: dict, test_samples: int) -> str:
    from pipeline.bundle.devicekit import cpu_isa
    cfg, metric = ctx.config, ctx.task.primary
    steps = ", ".join(s for s, on in (("structured pruning", cfg.prune.enabled), ("distillation", cfg.distill.enabled),
                                      (f"{art['precision']} {t.backend}", True)) if on)
    teacher = load.get("accuracy")
    drop = None if teacher is None or art["accuracy"] is None else metric.worse_by(teacher, art["accuracy"])
    host_isa = cpu_isa()
    return MODEL_CARD.format(
        model=load["model"], target=t.name, version=__version__, steps=steps, deliverable=art["file"].split("/")[-1],
        precision=art["precision"], size_kb=(art.get("size_bytes") or 0) / 1024, device=t.device.name,
        task=ctx.task.name.capitalize(), inputs=", ".join(f"{i['name']} {i['kind']} {i['shape']}"
                                                          for i in data_info.get("inputs", [])),
        data=load["data"], train=len(ctx.data.y_train), calibration=quant["calibration"]["name"],
        calib_n=quant["calibration"]["size"], seed=cfg.seed, test=test_samples,
        labels=", ".join(map(str, data_info["classes"][:20])) if data_info.get("classes") else "none (regression)",
        metric=metric.name, direction=metric.direction, teacher=f"{teacher:.4f}" if teacher is not None else "n/a",
        accuracy=f"{art['accuracy']:.4f}" if art["accuracy"] is not None else "n/a",
        drop="n/a" if drop is None else (f"{abs(drop):.4f} {'worse' if drop > 0 else 'better'} than the teacher"
                                         + (": a gain" if drop < 0 else "")),
        budget=t.budgets.max_accuracy_drop,
        float_layers=", ".join(f"{f['layer']} ({f['reason']})" for f in quant.get("float_layers", [])) or "none",
        host=", ".join(filter(None, [platform.machine(), ", ".join(host_isa["isa"]) or None])) or "unknown",
        host_isa="int8 dot-product instructions" if host_isa["int8_dot"] else "no int8 dot-product instructions",
        isa_line=("the target assumes " + ", ".join(t.device.isa) + "." if t.device.isa else
                  "the target names no instruction sets."),
        licence=(": the default model is trained here on Fashion-MNIST (MIT licence, Zalando Research)"
                 if cfg.model == "default" else ""))
