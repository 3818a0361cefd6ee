"""`python -m pipeline`: run, targets, calibrate, config, gate, verify, report, bench."""
from __future__ import annotations

import argparse
import errno
import json
import sys
from pathlib import Path

from pipeline import __version__
from pipeline.errors import UserError

OS_USER_ERRORS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                  errno.EFBIG: "a file size limit was hit (disk full or ulimit -f)",
                  errno.EACCES: "permission denied", errno.EROFS: "the file system is read-only",
                  errno.EPERM: "operation not permitted"}


def _floats(s: str) -> list[float]:
    try:
        return [float(v) for v in s.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{s}' is not a comma-separated list of numbers") from None


class Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line and exit 2 like every other user error."""

    def error(self, message: str):  # noqa: D401
        raise UserError(f"{self.prog}: {message}", f"see `{self.prog} --help`")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m pipeline", description=__doc__)
    p.add_argument("--version", action="version", version=f"edge-compress {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=Parser)

    r = sub.add_parser("run", help="run the stages for one or more targets")
    r.add_argument("--target", default="jetson", help="name(s) in targets/ or a .toml path; comma-separated")
    r.add_argument("--task", default=None, help="classification (default) | regression | text-classification | detection | "
                   "FILE.py:NAME (a Task plug-in)")
    r.add_argument("--model", default=None, help="default | text-default | detect-default | FILE.py:FACTORY | MODEL.pt2 | MODEL.onnx "
                   "(default: the task's bundled model)")
    r.add_argument("--weights", help="state_dict for FILE.py:FACTORY (loaded with weights_only=True)")
    r.add_argument("--data", default=None, help="fashion-mnist (default) | fashion-detect | fine-foods | FILE.npz | DIR (image classes, a YOLO "
                   "data.yaml folder or a COCO folder)")
    r.add_argument("--input-shape", action="append", metavar="[NAME=]SHAPE",
                   help="e.g. 1x3x224x224, or input_ids=1x128 per input (repeatable; must agree with the data)")
    r.add_argument("--dynamic", action="append", metavar="AXIS=LO..HI",
                   help="dynamic axis: batch=1..32, seq=16..128 (token inputs) or NAME:AXIS=LO..HI (repeatable): "
                        "ONNX dynamic dims, TensorRT profiles, a latency row per shape; TFLite keeps the data's shape")
    r.add_argument("--mean", type=_floats, help="per-channel mean on the 0..1 scale, e.g. 0.5,0.5,0.5")
    r.add_argument("--std", type=_floats, help="per-channel std on the 0..1 scale")
    r.add_argument("--config", help="a TOML file of run settings (sections prune, distill, quantize, evaluate)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any setting, e.g. --set distill.epochs=1 (repeatable)")
    r.add_argument("--out", help="run folder (default runs/<model>-<targets>)")
    r.add_argument("--until", help="stop after this stage (load, prune, distill, quantize, compile, evaluate, report)")
    r.add_argument("--force", action="store_true", help="re-run every stage, ignoring the cache")
    r.add_argument("--trust-model", action="store_true", help="allow executing a model file from outside the repo")

    sub.add_parser("targets", help="list the target profiles")

    c = sub.add_parser("calibrate", help="build a calibration set (with manifest) under calibration/")
    c.add_argument("--data", default=None, help="fashion-mnist (default) | fashion-detect | fine-foods | FILE.npz | DIR (image classes, a YOLO "
                   "data.yaml folder or a COCO folder)")
    c.add_argument("--size", type=int, default=512)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--name", help="default <data>-<size>")
    c.add_argument("--out-dir", default=None, help="default calibration/")
    c.add_argument("--set", action="append", default=[], metavar="preprocess.KEY=VALUE",
                   help="the run's preprocess settings for an image folder, e.g. --set preprocess.preset=imagenet")

    cf = sub.add_parser("config", help="show every run setting with its default and help (show) or its JSON schema")
    cf.add_argument("action", choices=["show", "schema"], help="show: a table; schema: the JSON schema of the config")
    cf.add_argument("--json", action="store_true", help="show: one JSON object per setting instead of a table")

    g = sub.add_parser("gate", help="compare a report with a baseline; exit 1 on a regression, 3 when no latency was compared (see pipeline/report/gate.py)")
    g.add_argument("report", help="the candidate report.json")
    g.add_argument("--baseline", required=True, help="baseline report, e.g. reports/baselines/<target>.json")
    g.add_argument("--target", help="target name or .toml whose budgets apply (default: the report's only target)")
    g.add_argument("--max-accuracy-drop", type=float, help="override the budget: fraction 0..1 below the baseline")
    g.add_argument("--max-latency-regression-pct", type=float, help="override the budget: percent slower than baseline")
    g.add_argument("--max-size-mb", type=float, help="override the budget: MB per target artifact")
    g.add_argument("--baseline-run", help="run folder holding the baseline's artifact files (enables interleaved timing)")
    g.add_argument("--interleaved-runs", type=int, default=None, metavar="N",
                   help="rounds of interleaved baseline/candidate timing (default 60; 0: compare stored figures)")
    g.add_argument("--threads", type=int, help="inference threads for interleaved timing (default 1)")
    g.add_argument("--device", action="store_true", help="compare the figures measured on the device (merged device "
                   "reports: accuracy on the bundle's eval slice, device latency) instead of the host's")
    g.add_argument("--allow-no-latency", action="store_true",
                   help="exit 0 even when the deliverable's latency was not compared (default: exit 3, not a pass)")
    g.add_argument("--junit", help="write JUnit XML here (one testcase per check)")
    g.add_argument("--markdown", help="write a Markdown summary here")
    g.add_argument("--update-baseline", action="store_true",
                   help="write the (trimmed) candidate to the --baseline path and exit 0")

    v = sub.add_parser("verify", help="check a hand-off bundle: sha256, outputs vs golden.npz, latency, no absolute paths")
    v.add_argument("bundle", help="a run's handoff/ folder, one target's folder, or handoff.tar.gz")
    v.add_argument("--threads", type=int, default=2, help="inference threads for the output check and timing")
    v.add_argument("--runs", type=int, default=100, help="timed runs per target (default 100)")

    b = sub.add_parser("bench", help="on the device: build the engine if missing, check golden outputs, time it, "
                                     "write a device report")
    b.add_argument("--bundle", required=True, help="a run's handoff/ folder or one target's folder")
    b.add_argument("--target", help="which target folder (default: the bundle's only one)")
    b.add_argument("--out", default="device_report.json", help="device report to write (default %(default)s)")
    b.add_argument("--warmup", type=int, default=50, help="untimed runs before timing")
    b.add_argument("--runs", type=int, default=1000, help="timed runs")
    b.add_argument("--threads", type=int, default=None, help="CPU threads for tflite/onnxruntime bundles "
                   "(default 2 here; with --remote, the target's)")
    b.add_argument("--remote", metavar="USER@HOST[:PORT]", help="bench on this device over SSH: copy the bundle, run its "
                   "run_on_device.py there, fetch the report, verify and merge it into the run's report")
    b.add_argument("--remote-python", default="python3", help="the device's Python (default %(default)s)")
    b.add_argument("--ssh-config", help="an ssh_config file instead of ~/.ssh/config (or EDGE_COMPRESS_SSH_CONFIG)")
    b.add_argument("--remote-dir", default=".cache/edge-compress",
                   help="where bundles go on the device: relative to its home, or absolute (default %(default)s)")
    b.add_argument("--remote-timeout", type=float, default=600.0, help="seconds per remote step (default %(default)s)")

    rp = sub.add_parser("report", help="merge device reports into a run's report (report.json/md/html)")
    rp.add_argument("run_dir", help="the run folder (holds report.json and handoff/)")
    rp.add_argument("--device-report", action="append", required=True, metavar="FILE",
                    help="a device report from `bench` or build_engine.py (repeatable)")

    for sp in (r, c, *sub.choices.values()):
        if not any(a.dest == "debug" for a in sp._actions):
            sp.add_argument("--debug", action="store_true", help="show tracebacks")
            sp.add_argument("-v", "--verbose", action="store_true")
    return p


def default_run_dir(model: str, targets) -> Path:
    stem = "default" if model in ("", "default") else Path(model.split(":")[0]).stem
    return Path("runs") / f"{stem}-{'+'.join(t.name for t in targets)}"


def cmd_run(a) -> int:
    from pipeline.config import build_run_config, load_targets
    from pipeline.data.shapes import parse_dynamic, parse_input_shapes
    from pipeline.runner import run_pipeline

    targets = load_targets(a.target)
    cfg = build_run_config(a.config, {"task": a.task, "model": a.model, "weights": a.weights, "data": a.data,
                                      "input_shape": parse_input_shapes(a.input_shape),
                                      "dynamic": parse_dynamic(a.dynamic) or None, "mean": a.mean, "std": a.std,
                                      "trust_model": a.trust_model or None}, a.set)
    run_dir = Path(a.out) if a.out else default_run_dir(cfg.model, targets)
    run_pipeline(run_dir, cfg, targets, until=a.until, force=a.force, verbose=a.verbose)
    return 0


def cmd_targets(a) -> int:
    from pipeline.config import available_targets, load_target
    print(f"{'target':18} {'backend':12} {'precision':9} {'round_to':>8}  device")
    for name in available_targets():
        t = load_target(name)
        print(f"{name:18} {t.backend:12} {t.precision:9} {t.round_to:>8}  {t.device.name}")
    return 0


def cmd_calibrate(a) -> int:
    from pipeline.compress import calibration
    from pipeline.data import resolve_data
    from pipeline.config import build_run_config
    pre = build_run_config(None, {}, a.set).preprocess
    # an image folder is decoded in RAM here (no run folder); the set holds only the samples drawn
    ds = resolve_data(a.data, preprocess=pre)
    kwargs = {"out_dir": Path(a.out_dir)} if a.out_dir else {}
    man, written = calibration.build_set(ds, a.size, a.seed, a.name, **kwargs)
    data = json.loads(man.read_text())["file"]
    if not written:
        print(f"{man} and {data} are up to date ({a.size} samples of {ds.name}, seed {a.seed}): nothing rewritten")
    else:
        print(f"wrote {man} and {data} ({a.size} samples of {ds.name}, seed {a.seed})")
    return 0


def cmd_config(a) -> int:
    from pipeline.config import RunConfig, settings
    if a.action == "schema":
        print(json.dumps(RunConfig.model_json_schema(), indent=2))
        return 0
    rows = settings()
    if a.json:
        for row in rows:
            print(json.dumps(row, default=str))
        return 0
    width = max(len(r["key"]) for r in rows)
    print(f"{'setting':{width}}  {'default':16}  help (--set KEY=VALUE, or [section] key = value in --config FILE.toml)")
    for r in rows:
        default = json.dumps(r["default"], default=str)
        limits = f" [{r['limits']}]" if r["limits"] else ""
        print(f"{r['key']:{width}}  {default:16}  {r['help'] or r['type']}{limits}")
    return 0


def cmd_gate(a) -> int:
    from pipeline.report import gate, gate_output
    if a.update_baseline:
        path, hashed = gate_output.update_baseline(Path(a.report), Path(a.baseline))
        print(f"gate: baseline written to {path} from {a.report} (sha256 of {hashed} artifact files recorded)")
        return 0
    result = gate.gate(Path(a.report), Path(a.baseline), target=a.target, max_accuracy_drop=a.max_accuracy_drop,
                       max_latency_regression_pct=a.max_latency_regression_pct, max_size_mb=a.max_size_mb,
                       baseline_run=Path(a.baseline_run) if a.baseline_run else None,
                       rounds=gate.DEFAULT_ROUNDS if a.interleaved_runs is None else a.interleaved_runs,
                       threads=a.threads, device=a.device, allow_no_latency=a.allow_no_latency,
                       progress=gate_output.progress_to_stderr)
    print(gate_output.text(result))
    gate_output.write_outputs(result, Path(a.junit) if a.junit else None, Path(a.markdown) if a.markdown else None)
    return result.exit_code


def cmd_verify(a) -> int:
    from pipeline import verify
    result = verify.verify(Path(a.bundle), threads=a.threads, runs=a.runs)
    print(verify.text(result))
    return result.exit_code


def cmd_bench(a) -> int:
    from pipeline import device
    if a.remote:
        from pipeline import remote
        host, port = remote.parse_remote(a.remote)
        r = remote.Remote(host, port, python=a.remote_python, ssh_config=a.ssh_config, timeout_s=a.remote_timeout,
                          root=a.remote_dir)
        lines, report = remote.bench_remote(r, Path(a.bundle), a.target, a.runs, a.warmup, a.threads)
        print("\n".join(lines))
        return device.exit_code(report)
    report = device.bench(Path(a.bundle), a.target, Path(a.out), warmup=a.warmup, runs=a.runs, threads=a.threads or 2)
    print(device.summary(report, Path(a.out)))
    return device.exit_code(report)


def cmd_report(a) -> int:
    from pipeline import device
    for line in device.merge(Path(a.run_dir), [Path(f) for f in a.device_report]):
        print(line)
    return 0


COMMANDS = {"run": cmd_run, "targets": cmd_targets, "calibrate": cmd_calibrate, "config": cmd_config, "gate": cmd_gate,
            "verify": cmd_verify, "bench": cmd_bench, "report": cmd_report}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.cmd](args)
    except UserError as e:
        if debug:
            raise
        print(e.line(), file=sys.stderr)
        return e.exit_code
    except OSError as e:
        if debug or e.errno not in OS_USER_ERRORS:
            raise
        where = f" writing {e.filename}" if e.filename else ""
        print(f"error: {OS_USER_ERRORS[e.errno]}{where} -- fix: free space or choose a writable --out, "
              f"then run the same command again (finished stages are reused)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished stages are kept; run the same command to continue", file=sys.stderr)
        return 130
