"""Device-side measurement and merging it into a run's report.

`python -m pipeline bench --bundle B [--target NAME] [--out device_report.json]` runs ON the device:
for a TensorRT bundle it builds `model.plan` from the QDQ ONNX if it is missing (with the options of
the bundle's build_engine.py), checks the engine's outputs against `golden.npz` and times it with CUDA
events; for a TFLite or ONNX Runtime bundle it does the same with this machine's runtime (a Raspberry
Pi with LiteRT, an x86 box with ONNX Runtime). It writes a device report in the schema that the
bundle's build_engine.py writes too (both come from `pipeline.bundle.devicekit.device_report`;
schema: pipeline/report/schema.py).

`python -m pipeline report RUN_DIR --device-report FILE [...]` merges device reports into the run's
top-level report.json / report.md / report.html, after checking that each report measured the very
artifact this run handed off (sha256).
"""
from __future__ import annotations

import json
import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from pipeline import backends
from pipeline.bundle.devicekit import REPORT_VERSION, device_latency, device_report, golden_check, golden_inputs
from pipeline.bundle.run_on_device import evaluate
from pipeline.errors import UserError
from pipeline.latency import measure
from pipeline.report import render, schema
from pipeline.hashing import sha256_file
from pipeline.runner import write_json
from pipeline.verify import TargetResult, check_files, read_manifest, target_dirs

WRITTEN_BY = "python -m pipeline bench"
KEPT_DIR = "device-reports"   # merged device reports, kept in the run folder
CPU_WHAT = "wall time of one {runtime} inference on this machine's CPU ({threads} threads), input prepared beforehand"


# ---------------------------------------------------------------- bench
def _pick_target(bundle: Path, target: str | None) -> tuple[Path, dict]:
    if bundle.is_file():
        raise UserError(f"bench needs the bundle as a folder, got the file {bundle}",
                        f"extract it first (tar xzf {bundle.name}) and pass the handoff/ folder")
    if not bundle.is_dir():
        raise UserError(f"{bundle} does not exist", "pass a run's handoff/ folder or one target's folder")
    found = {read_manifest(d)["target"]: d for d in target_dirs(bundle)}
    if target is None and len(found) > 1:
        raise UserError(f"{bundle} holds targets {', '.join(sorted(found))}", "pick one with --target NAME")
    name = target or next(iter(found))
    if name not in found:
        raise UserError(f"no target '{name}' in {bundle} (it holds {', '.join(sorted(found))})",
                        "pass one of those to --target")
    return found[name], read_manifest(found[name])


def _runtime_version(engine) -> str | None:
    for pkg in engine.runtime_packages:
        try:
            return f"{pkg} {version(pkg)}"
        except PackageNotFoundError:
            continue
    return None


def cpu_bench(engine, tdir: Path, manifest: dict, warmup: int, runs: int, threads: int) -> dict:
    """bench for engines that run their deliverable on the device's CPU (LiteRT, ONNX Runtime)."""
    ok, reason = engine.available()
    if not ok:
        raise UserError(f"target '{manifest['target']}' needs the {engine.name} runtime, which is not installed here: "
                        f"{reason}", engine.install_hint)
    artifact = tdir / manifest["deliverable"]
    report = device_report(WRITTEN_BY, artifact, {"name": engine.name, "version": _runtime_version(engine),
                                                  "threads": threads}, gpu=False)
    runner = engine.Runner(artifact, threads=threads)
    with np.load(tdir / manifest["golden"]["file"]) as g:
        x, y, labels = golden_inputs(g), g["y"], (g["labels"] if "labels" in g.files else None)
        boxes = g["boxes"] if "boxes" in g.files else None
    gold = manifest["golden"]
    report["check"] = golden_check(runner.run(x), y, labels, gold["max_abs"], 0.0, gold["min_argmax_agreement"],
                                   boxes, manifest.get("detection"))
    names = [i["name"] for i in manifest.get("inputs", [])]
    report["eval"] = evaluate(lambda arrays: runner.run(arrays[0] if len(arrays) == 1 else dict(zip(names, arrays))),
                              manifest, tdir)
    xb = runner.prepare(x)
    lat = measure(lambda: runner.run_raw(xb), warmup=warmup, runs=runs, threads=threads)
    report["latency_ms"] = device_latency(lat["samples_ms"], warmup, 1,
                                          CPU_WHAT.format(runtime=engine.name, threads=threads))
    return report


def bench(bundle: Path, target: str | None, out: Path, warmup: int = 50, runs: int = 1000, threads: int = 2) -> dict:
    """Check, (build,) and time one target of a bundle on this machine; write and return the device report."""
    if runs < 5 or warmup < 0 or threads < 1:
        raise UserError(f"--runs {runs} --warmup {warmup} --threads {threads}: need runs >= 5, warmup >= 0, "
                        "threads >= 1", "pass sensible values, e.g. --runs 1000 --warmup 50")
    tdir, manifest = _pick_target(Path(bundle), target)
    res = TargetResult(manifest["target"], manifest["backend"], manifest.get("device", "?"))
    check_files(tdir, manifest, res)
    if res.failures:
        raise UserError(f"bundle folder {tdir} does not match its manifest: {'; '.join(res.failures)}",
                        "get an intact bundle (python -m pipeline verify shows what is wrong)")
    if manifest["backend"] not in backends.BACKENDS:
        raise UserError(f"unknown backend '{manifest['backend']}' in {tdir / 'manifest.json'}", "regenerate the bundle")
    report = backends.get(manifest["backend"]).bench(tdir, manifest, warmup, runs, threads)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, report)
    return report


def exit_code(report: dict) -> int:
    """0 when the outputs matched golden.npz and the artifact matched its manifest, else 1."""
    return 0 if report["check"]["passed"] and report["artifact"]["matches_manifest"] else 1


def summary(report: dict, out: Path) -> str:
    """A few lines for the terminal."""
    c, lat, dev = report["check"], report["latency_ms"], report["device"]
    acc = "n/a" if c["accuracy_on_golden"] is None else f"{c['accuracy_on_golden']:.3f}"
    lines = [f"bench {report['target']} ({report['backend']}) on {dev['name'] or 'unknown device'} "
             f"[{report['runtime']['name']} {report['runtime']['version']}]",
             f"  artifact  {report['artifact']['file']} sha256 {report['artifact']['sha256'][:12]}: "
             f"{'matches the manifest' if report['artifact']['matches_manifest'] else 'DOES NOT match the manifest'}",
             f"  golden    {'OK' if c['passed'] else 'FAILED'}: max |diff| {c['max_abs_err']:.3g} (tolerance {c['atol']:.3g}), "
             f"argmax agreement {c['top1_agreement']:.3f} (min {c['min_top1_agreement']:.3g}), accuracy on "
             f"{c['n']} golden samples {acc}",
             f"  latency   p50 {lat['p50']:.3f} ms, p90 {lat['p90']:.3f} ms, p99 {lat['p99']:.3f} ms "
             f"({lat['n']} runs, batch {lat['batch']}; {lat['what']})"]
    if report["layer_precisions"]:
        lines.append(f"  layers    {', '.join(f'{k} {v}' for k, v in sorted(report['layer_precisions'].items()))}")
    lines.append(f"  wrote {out}")
    return "\n".join(lines)


# ---------------------------------------------------------------- merge into a run's report
def load_device_report(path: Path) -> dict:
    """A device report, checked against the schema (pipeline/report/schema.py)."""
    try:
        dr = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read device report {path}: {e}", "pass the JSON that bench or build_engine.py wrote") from None
    if not isinstance(dr, dict) or dr.get("device_report_version") != REPORT_VERSION:
        raise UserError(f"{path} is not a version-{REPORT_VERSION} device report",
                        "write it with `python -m pipeline bench` or the bundle's build_engine.py of this version")
    if dr.get("error"):
        raise UserError(f"device report {path} records a failed run: {dr['error']}", "fix that on the device and bench again")
    for key in ("target", "artifact", "check", "latency_ms", "device", "runtime"):
        if not dr.get(key):
            raise UserError(f"device report {path} lacks '{key}'", "bench again with this version of the tool")
    if not dr["artifact"].get("sha256"):
        raise UserError(f"device report {path} lacks the artifact's sha256", "bench again with this version of the tool")
    if dr["latency_ms"].get("where") != "device" or dr["latency_ms"].get("p50") is None:
        raise UserError(f"device report {path} has no device latency (latency_ms.where must be \"device\")",
                        "bench again on the device")
    if not dr["check"].get("passed"):
        raise UserError(f"device report {path}: the outputs on the device did not match golden.npz "
                        f"(agreement {dr['check'].get('top1_agreement')}, max |diff| {dr['check'].get('max_abs_err')}), "
                        "so its latency is not of a correct build", "investigate the device build, then bench again")
    return dr


def _device_row(report: dict, t: dict, dr: dict) -> dict:
    """The artifact row that carries the device figure: the TensorRT engine's row, or (TFLite, ONNX
    Runtime) a '<deliverable> (device)' row next to the host-measured one."""
    lat, c = dr["latency_ms"], dr["check"]
    note = (f"measured on {dr['device']['name'] or 'the device'} ({dr['runtime']['name']} {dr['runtime']['version']}); "
            f"outputs on {c['n']} golden samples: argmax agreement {c['top1_agreement']:.3f}"
            + ("" if c.get("accuracy_on_golden") is None else f", accuracy {c['accuracy_on_golden']:.3f}")
            + "; test-set accuracy is a host figure")
    ev = dr.get("eval") or {}
    if ev.get("value") is not None:
        note = note.replace("; test-set accuracy is a host figure",
                            f"; {ev['metric']} {ev['value']:.4f} on the {ev['samples']} labelled samples of "
                            f"{ev['file']} (host {ev['host_value']:.4f} on the same samples)")
    fields = {"latency_p50_ms": lat["p50"], "latency_p90_ms": lat["p90"], "latency_ci95_ms": None,
              "latency_where": "device", "note": note, "accuracy": ev.get("value"),
              "metrics": ev.get("metrics"), "accuracy_delta": None, "accuracy_where": "device" if ev else None,
              "accuracy_samples": ev.get("samples")}
    # the row of an engine built on the device (reports before 1.1: the target's own-engine row without a file)
    row = next((a for a in report["artifacts"] if a["target"] == t["name"] and (
        a.get("device_engine") or (a["backend"] == t["backend"] and a.get("file") is None))), None)
    if row is not None:       # an engine built on the device (TensorRT): its own row carries the device figure
        row.update(fields)
        return row
    host = next((a for a in report["artifacts"] if a["name"] == t["deliverable"]), None)
    if host is None:
        raise UserError(f"report has no row for the deliverable of target '{t['name']}'", "regenerate the report")
    name = f"{host['name']} (device)"
    report["artifacts"] = [a for a in report["artifacts"] if a["name"] != name]
    row = {**host, **fields, "name": name, "selected": None}
    report["artifacts"].insert(report["artifacts"].index(host) + 1, row)
    return row


def merge(run_dir: Path, files: list[Path]) -> list[str]:
    """Merge device reports into RUN_DIR's top-level report.json/md/html; returns one line per report."""
    report_path = run_dir / "report.json"
    if not report_path.is_file():
        raise UserError(f"no report.json in {run_dir}", "pass a run folder whose run finished the report stage")
    report = json.loads(report_path.read_text())
    schema.validate(report)
    reports = [(Path(f), load_device_report(Path(f))) for f in files]
    lines = []
    for path, dr in reports:
        t = next((x for x in report["targets"] if x["name"] == dr["target"]), None)
        if t is None:
            raise UserError(f"device report {path} is for target '{dr['target']}', the run in {run_dir} has "
                            f"{', '.join(x['name'] for x in report['targets'])}", "merge it into the run it came from")
        manifest_path = run_dir / "handoff" / t["name"] / "manifest.json"
        if not manifest_path.is_file():
            raise UserError(f"no hand-off manifest {manifest_path}", "run the pipeline through the handoff stage")
        art = dr["artifact"]
        listed = json.loads(manifest_path.read_text())["files"].get(art["file"])
        if listed != art["sha256"]:
            raise UserError(f"device report {path} measured {art['file']} with sha256 {art['sha256'][:16]}, but this "
                            f"run's hand-off has " + (f"sha256 {listed[:16]}" if listed else "no such file")
                            + f" (refusing to merge a measurement of another artifact)",
                            f"bench the bundle of {run_dir / 'handoff'}, or merge into the run that made the bundle")
        ev = dr.get("eval")
        if ev:
            shipped = json.loads(manifest_path.read_text())["files"].get(ev["file"])
            if shipped != ev.get("sha256"):
                raise UserError(f"device report {path} measured its accuracy on {ev['file']} with sha256 "
                                f"{str(ev.get('sha256'))[:16]}, this run's hand-off has "
                                + (f"sha256 {shipped[:16]}" if shipped else "no such file"),
                                "bench the bundle this run made, then merge again")
        row = _device_row(report, t, dr)
        lat, budget = dr["latency_ms"], t["budgets"]["latency_ms"]
        t["measured"]["latency_p50_ms"] = lat["p50"]
        t["budgets_met"]["latency"] = None if budget is None else lat["p50"] <= budget
        t["device_measurement"] = {
            "device": dr["device"]["name"], "runtime": dr["runtime"], "artifact": art["file"], "sha256": art["sha256"],
            "latency_p50_ms": lat["p50"], "latency_p90_ms": lat["p90"], "latency_p99_ms": lat["p99"], "runs": lat["n"],
            "top1_agreement_golden": dr["check"]["top1_agreement"], "accuracy_on_golden": dr["check"]["accuracy_on_golden"],
            "golden_samples": dr["check"]["n"], "layer_precisions": dr.get("layer_precisions"),
            "report_file": path.name, "report_created": dr.get("created"), "written_by": dr.get("written_by"),
            "isa": dr.get("isa"), "host_latency_p50_ms": t["measured"].get("host_latency_p50_ms"),
            "eval": None if not ev else {
                "file": ev["file"], "sha256": ev["sha256"], "samples": ev["samples"], "metric": ev["metric"],
                "device": ev["value"], "host": ev["host_value"], "device_metrics": ev["metrics"],
                "host_metrics": ev["host_metrics"],
                "difference": None if ev["value"] is None or ev["host_value"] is None else ev["value"] - ev["host_value"]}}
        t["notes"] = [n for n in t["notes"] if not n.startswith("device report:")] + [f"device report: {row['note']}"]
        verdict = "n/a" if budget is None else ("met" if t["budgets_met"]["latency"] else "MISSED")
        lines.append(f"merged {path} into {report_path}: {t['name']} device p50 {lat['p50']:.3f} ms on "
                     f"{dr['device']['name'] or 'the device'} (budget {budget} ms: {verdict})")
    schema.validate(report)
    write_json(report_path, report)
    (run_dir / "report.md").write_text(render.markdown(report))
    from pipeline.report import html
    (run_dir / "report.html").write_text(html.html(report))
    lines.append(f"rewrote {run_dir / 'report.md'} and {run_dir / 'report.html'}")
    # Kept beside the run, so that a later `run` of this folder merges them again (see remerge).
    kept = run_dir / KEPT_DIR
    kept.mkdir(exist_ok=True)
    for path, dr in reports:
        dest = kept / f"{dr['target']}.json"
        if path.resolve() != dest.resolve():
            shutil.copyfile(path, dest)
    return lines


def remerge(run_dir: Path) -> list[str]:
    """Merge the device reports kept in RUN_DIR/device-reports/ into a freshly written report, each on its
    own: one that measured an artifact this run no longer ships is left out, with a line saying so."""
    lines = []
    for f in sorted((run_dir / KEPT_DIR).glob("*.json")):
        try:
            lines += merge(run_dir, [f])[:1]
        except UserError as e:
            lines.append(f"device report {f} not merged: {e.problem}; bench the new bundle on the device again")
    return lines
