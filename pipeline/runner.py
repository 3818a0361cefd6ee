"""The stage contract and the loop that runs stages into a run directory.

A stage declares its inputs (names of earlier stages) and the slice of config it reads. Its
fingerprint hashes that slice, the sha256 of its input artifacts and the package version. A stage
folder holding a finished `stage.json` with the same fingerprint is reused; otherwise the stage runs
in a temporary folder that is renamed into place only when it succeeded.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

from pipeline import __version__
from pipeline.config import RunConfig, Target
from pipeline.errors import BudgetMissed, UserError
from pipeline.hashing import sha256_file, sha256_json

STAGE_RECORD = "stage.json"


class StageFailed(UserError):
    """A stage failed on something that is not a known user error: one line naming the stage, exit 1."""

    exit_code = 1

    def __init__(self, stage: str, err: BaseException):
        first = (str(err).strip().splitlines() or [""])[0][:300]
        super().__init__(f"stage {stage} failed: {err.__class__.__name__}: {first}",
                         "nothing was marked done; run again with --debug for the traceback, and report it "
                         "if the model and data are as intended")
log = logging.getLogger("pipeline")


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


# Where the run loop is (stage k of n), for progress bars and stage lines; None outside a run.
STAGE_POSITION: dict[str, tuple[int, int]] = {}


def _position(stage: str) -> str:
    """'stage 3/8, ' for a stage of the current run, else ''."""
    pos = STAGE_POSITION.get(stage)
    return f"stage {pos[0]}/{pos[1]}, " if pos else ""


def _stage_label(stage: str) -> str:
    """'stage 3/8 distill' when `stage` (or the stage it belongs to: "distill: teacher outputs") is in the run."""
    pos = _position(stage.split(":")[0].split(" ")[0])
    return f"{pos.rstrip(', ')} {stage}" if pos else stage


def live_bars() -> bool:
    """Live bars only on a terminal (EDGE_COMPRESS_PLAIN=1 forces the plain lines)."""
    return sys.stderr.isatty() and os.environ.get("EDGE_COMPRESS_PLAIN", "") in ("", "0")


class Progress:
    """Progress of long work. On a terminal: a live bar (tqdm) with the stage counter ("stage 3/8 distill"),
    the step, the rate and the ETA; the timestamped line (stage, step i/n, extra fields, ETA) still goes to
    the log file every `every_s`. Elsewhere (CI, pipes) only those lines, on stderr and in the log file."""

    def __init__(self, stage: str, total: int, unit: str = "step", every_s: float = 5.0):
        self.stage, self.total, self.unit, self.every_s = stage, max(1, total), unit, every_s
        self.t0 = time.monotonic()
        self.last = 0.0
        self.bar = None
        if live_bars():
            from tqdm import tqdm
            self.bar = tqdm(total=self.total, desc=_stage_label(stage), unit=unit.split(" ")[-1], file=sys.stderr,
                            leave=False, dynamic_ncols=True, mininterval=0.2)

    def update(self, done: int, force: bool = False, **fields: Any) -> None:
        if self.bar is not None:
            self.bar.n = done
            if fields:
                self.bar.set_postfix({k: f"{v:.4g}" if isinstance(v, float) else v for k, v in fields.items()},
                                     refresh=False)
            self.bar.refresh()
            if done >= self.total:
                self.bar.close()
        now = time.monotonic()
        if not force and now - self.last < self.every_s and done < self.total:
            return
        self.last = now
        elapsed = now - self.t0
        eta = elapsed / done * (self.total - done) if done else float("nan")
        extra = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())
        log.info("[%s] %s %d/%d %s elapsed %s ETA %s", self.stage, self.unit, done, self.total, extra,
                 _fmt_s(elapsed), _fmt_s(eta), extra={"progress_line": self.bar is not None})


class _TerminalHandler(logging.StreamHandler):
    """stderr lines that do not tear a live bar (tqdm.write), without the step lines a bar already shows."""

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "progress_line", False):
            return
        if live_bars():
            from tqdm import tqdm
            try:
                tqdm.write(self.format(record), file=sys.stderr)
            except Exception:  # noqa: BLE001 -- logging must never raise
                self.handleError(record)
        else:
            super().emit(record)


def _fmt_s(s: float) -> str:
    if s != s:  # NaN
        return "?"
    m, s = divmod(int(s), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


@dataclass
class Context:
    """What every stage can see: the run folder, the config, the targets, the data (loaded once)."""

    run_dir: Path
    config: RunConfig
    targets: list[Target]
    data_loader: Callable[[], Any]
    _data: Any = None
    statuses: dict[str, str] = field(default_factory=dict)
    _task: Any = None

    @property
    def data(self):
        if self._data is None:
            self._data = self.data_loader()
        return self._data

    def stage_dir(self, name: str) -> Path:
        return self.run_dir / name

    def record(self, name: str) -> dict:
        p = self.run_dir / name / STAGE_RECORD
        if not p.exists():
            raise UserError(f"stage '{name}' has not finished in {self.run_dir}", "run the stages before it first")
        try:
            rec = read_json(p)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            rec = None
        if not isinstance(rec, dict) or not isinstance(rec.get("outputs"), dict) or \
                not isinstance(rec.get("metrics"), dict):
            raise UserError(f"the record {p} is damaged", "run the same command again (the stage is re-run)")
        return rec

    def artifact(self, stage: str, filename: str) -> Path:
        p = self.run_dir / stage / filename
        if not p.exists():
            raise UserError(f"missing artifact {stage}/{filename} in {self.run_dir}", "re-run with --force")
        return p

    # What several stages read the same way (a stage never imports another stage).
    @property
    def task(self):
        """The run's task (pipeline/tasks): its metrics, loss and checks."""
        if self._task is None:
            from pipeline import tasks
            self._task = tasks.resolve(self.config.task, self.config.trust_model)
            self._task.configure(self.config)
        return self._task

    def example(self):
        """One normalized test sample (Inputs): the trace/export example of every stage."""
        return self.data.normalize(self.data.x_test[:1])

    def model_spec(self):
        from pipeline import models
        c = self.config
        return models.parse_spec(c.model, c.weights, c.trust_model)

    def torch_model(self, stage: str):
        """The torch model `stage` wrote (model.pt for factory models, model.pt2 for exported ones), in eval mode."""
        from pipeline import models
        spec = self.model_spec()
        return models.load_model(spec, self.artifact(stage, "model.pt" if spec.trainable else "model.pt2")).eval()

    def input_shapes(self) -> dict[str, list[int]]:
        """{input: (1, ...)} from the data; --input-shape (all inputs, or the first when unnamed) must agree."""
        shapes = {s.name: [1, *s.shape] for s in self.data.specs}
        given = self.config.input_shape
        if isinstance(given, list):
            given = {next(iter(shapes)): given}
        for name, shape in (given or {}).items():
            if name not in shapes:
                if name == "input" and len(shapes) == 1:
                    name = next(iter(shapes))
                else:
                    raise UserError(f"--input-shape names '{name}', but the model's inputs are {', '.join(shapes)}",
                                    "name one of those, e.g. --input-shape NAME=1x...")
            if list(shape[1:]) != shapes[name][1:]:
                raise UserError(f"input shape {list(shape)} for '{name}' does not match the data's {shapes[name]}",
                                "drop --input-shape or pass data of that shape (declare varying sizes with --dynamic)")
        return shapes

    def input_shape(self) -> list[int]:
        """(1, ...) of the first input (the only one of an image model)."""
        return next(iter(self.input_shapes().values()))

    def dynamic(self):
        """The run's dynamic axes (pipeline/data/shapes.py) resolved against the data's inputs."""
        from pipeline.data.shapes import Dynamic
        dyn = Dynamic(self.config.dynamic, self.data.specs)
        dyn.check_data(self.input_shapes())
        return dyn

    def calibration_set(self):
        """The run's verified calibration set (as stored), its manifest and the manifest's path."""
        from pipeline.compress import calibration
        return calibration.resolve(self.config.quantize.calibration, self.data, self.config.seed, self.input_shape(),
                                   scratch=self.run_dir / "calibration")


class Stage:
    """Subclasses set `name`, `inputs`, and implement `config_slice` and `run`."""

    name: str = ""
    inputs: tuple[str, ...] = ()
    target: Optional[Target] = None
    config_sections: tuple[str, ...] = ()   # RunConfig sections the stage reads; hashed whole by `sections`

    def config_slice(self, ctx: Context) -> dict:
        return {}

    def run(self, ctx: Context, out: Path) -> dict:
        """Do the work, writing files into `out`; return the stage's metrics."""
        raise NotImplementedError

    def fingerprint(self, ctx: Context) -> str:
        inputs = {name: ctx.record(name)["outputs"] for name in self.inputs}
        return sha256_json({"config": self.config_slice(ctx), "inputs": inputs, "version": __version__})

    def sections(self, ctx: Context) -> dict:
        """The config sections the stage declares (`config_sections`), whole: a new setting in one of them
        changes the cache key without anyone listing it."""
        out = {name: getattr(ctx.config, name).cache_key() for name in self.config_sections}
        task_key = ctx.task.cache_key()
        return out | ({"task_options": task_key} if task_key else {})


def record_hash(rec: dict) -> str:
    """sha256 of a record as stored, without its own `record_sha256`: a hand-edited stage.json shows."""
    body = json.loads(json.dumps({k: v for k, v in rec.items() if k != "record_sha256"}, default=str))
    return sha256_json(body)


def file_stats(p: Path) -> list[int]:
    st = p.stat()
    return [st.st_size, st.st_mtime_ns]


def outputs_intact(folder: Path, rec: dict) -> bool:
    """Every output the record lists is there with its recorded sha256: checked by size and mtime first,
    re-hashed only when those differ; nothing else but stage.json in the folder."""
    outputs, stats = rec.get("outputs"), rec.get("files")
    if not isinstance(outputs, dict) or not isinstance(stats, dict) or set(stats) != set(outputs):
        return False
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {STAGE_RECORD}
    if on_disk != set(outputs):
        return False
    for name, sha in outputs.items():
        p = folder / name
        if p.is_symlink() or not p.is_file():
            return False
        now = file_stats(p)
        if now == stats[name]:
            continue
        if now[0] != (stats[name] or [None])[0] or sha256_file(p) != sha:
            return False
    return True


def cached_record(stage: Stage, ctx: Context, fingerprint: Optional[str] = None) -> Optional[dict]:
    """The stage's finished record if its fingerprint still matches, the record is as the run wrote it
    and its outputs still have their recorded sha256; else None (re-run). Never raises on a damaged record."""
    folder = ctx.stage_dir(stage.name)
    try:
        rec = read_json(folder / STAGE_RECORD)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(rec, dict) or rec.get("status") != "done" or rec.get("record_sha256") != record_hash(rec):
        return None
    fp = fingerprint or stage.fingerprint(ctx)
    if rec.get("fingerprint") != fp or not isinstance(rec.get("metrics"), dict) or not outputs_intact(folder, rec):
        return None
    return rec


def run_stage(stage: Stage, ctx: Context, force: bool = False) -> dict:
    final = ctx.stage_dir(stage.name)
    fp = stage.fingerprint(ctx)
    rec = None if force else cached_record(stage, ctx, fp)
    if rec is not None:
        log.info("[%s] cached (%sfingerprint %s)", stage.name, _position(stage.name), fp[:12])
        ctx.statuses[stage.name] = "cached"
        return rec
    tmp = ctx.run_dir / f".{stage.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    pos = _position(stage.name).rstrip(", ")
    log.info("[%s] running%s", stage.name, f" ({pos})" if pos else "")
    t0 = time.monotonic()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    try:
        metrics = stage.run(ctx, tmp)
    except UserError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        e.problem = e.problem if e.problem.startswith("stage ") else f"stage {stage.name}: {e.problem}"
        raise
    except (KeyboardInterrupt, SystemExit, OSError):
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except Exception as e:   # noqa: BLE001 -- any other failure: one line naming the stage (--debug: traceback)
        shutil.rmtree(tmp, ignore_errors=True)
        raise StageFailed(stage.name, e) from e
    files = [p for p in sorted(tmp.rglob("*")) if p.is_file() and p.relative_to(tmp).as_posix() != STAGE_RECORD]
    outputs = {p.relative_to(tmp).as_posix(): sha256_file(p) for p in files}
    rec = {
        "stage": stage.name,
        "status": "done",
        "fingerprint": fp,
        "version": __version__,
        "target": stage.target.name if stage.target else None,
        "inputs": {name: ctx.record(name)["outputs"] for name in stage.inputs},
        "config": stage.config_slice(ctx),
        "outputs": outputs,
        "files": {p.relative_to(tmp).as_posix(): file_stats(p) for p in files},   # [size, mtime_ns]
        "started": started,
        "wall_s": round(time.monotonic() - t0, 3),
        "metrics": metrics,
    }
    rec["record_sha256"] = record_hash(rec)
    write_json(tmp / STAGE_RECORD, rec)
    old = ctx.run_dir / f".{stage.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    log.info("[%s] done in %.1fs", stage.name, rec["wall_s"])
    ctx.statuses[stage.name] = "ran"
    return rec


class RunLock:
    """An exclusive lock on a run folder: a second run on the same folder refuses at once."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / ".lock"
        self.fd: Optional[int] = None

    def __enter__(self) -> "RunLock":
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(self.fd)
            raise UserError(f"run folder {self.path.parent} is in use by {holder}",
                            "wait for that run to finish, or pass --out to use another folder") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"pid {os.getpid()}".encode(), 0)
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)


def setup_logging(run_dir: Optional[Path], verbose: bool = False) -> None:
    root = logging.getLogger("pipeline")
    root.handlers.clear()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
    term = _TerminalHandler(sys.stderr)
    term.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    root.addHandler(term)
    if run_dir is not None:
        fh = logging.FileHandler(run_dir / "log.txt")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root.addHandler(fh)


def _check_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to run folder {run_dir}: {e.strerror}", "pass --out with a writable folder") from None


def run_pipeline(run_dir: Path, config: RunConfig, targets: list[Target], until: Optional[str] = None,
                 force: bool = False, verbose: bool = False) -> Context:
    """The one loop of a run: plan the stages, check what can be checked before any work (the --until
    stage, the calibration set), run (or reuse) each stage in order under the run folder's lock, publish
    the report and merge device reports measured earlier. Under torchrun, ranks other than 0 wait for
    the distill stage, take part in it, and return."""
    from pipeline import distributed
    from pipeline.data import resolve_data
    from pipeline.stages import ORDER, kind, plan

    ctx = Context(run_dir, config, targets, lambda: resolve_data(config.data, config.mean, config.std, ctx.task,
                                                                 config.preprocess, run_dir / ".data-cache"))
    spec = ctx.model_spec()
    if until and until not in ORDER:
        raise UserError(f"--until {until}: no such stage", f"use one of {', '.join(ORDER)}")
    if until in ("prune", "distill") and not spec.trainable:
        raise UserError(f"--until {until}: {spec.kind} models skip prune and distill", "use --until quantize or later")
    distributed.init()
    stages = plan(ctx, spec.trainable)
    if until and not any(kind(s.name) == until for s in stages):
        raise UserError(f"--until {until}: this run has no {until} stage (prune.enabled or distill.enabled is "
                        f"false)", "use --until with a later stage, or enable the stage")
    if distributed.rank() != 0:
        _distill_worker(ctx, stages)
        return ctx
    _check_writable(run_dir)
    told_workers = not distributed.active()
    try:
        with RunLock(run_dir):
            setup_logging(run_dir, verbose)
            log.info("edge-compress %s: model %s, targets %s, run folder %s", __version__, spec.label,
                     ",".join(t.name for t in targets), run_dir)
            t0 = time.monotonic()
            if not spec.trainable:
                log.info("prune and distill skipped: %s models have no nn.Module layers to prune", spec.kind)
            last = max((i for i, s in enumerate(stages) if kind(s.name) == until), default=len(stages) - 1)
            if any(kind(s.name) == "quantize" for s in stages[: last + 1]):
                ctx.calibration_set()   # refuse a bad calibration set now, not after minutes of distillation
            STAGE_POSITION.clear()
            STAGE_POSITION.update({s.name: (i + 1, last + 1) for i, s in enumerate(stages[: last + 1])})
            for line in resume_notice(run_dir, stages[: last + 1], force):
                log.info(line)
            for s in stages[: last + 1]:
                if s.name == "distill" and not told_workers:
                    distributed.broadcast(force or cached_record(s, ctx) is None)
                    told_workers = True
                run_stage(s, ctx, force=force)
            if kind(stages[last].name) in ("report", "handoff"):
                _publish_report(run_dir)
            missed = int8_misses(ctx, stages[: last + 1])
            cached = sum(v == "cached" for v in ctx.statuses.values())
            report = run_dir / "report.html"
            log.info("finished in %.1fs (%d stages ran, %d cached); %s", time.monotonic() - t0,
                     len(ctx.statuses) - cached, cached,
                     f"report: {report} (and report.md, report.json)" if report.is_file() else f"run folder: {run_dir}")
        if missed:
            raise BudgetMissed("; ".join(missed), "raise budgets.max_accuracy_drop or quantize.max_float_layers, try "
                               "quantize.equalize / quantize.bias_correction, or set float_fallback = true in the "
                               "target to ship FP32; the bundle written is not fit to ship")
    finally:
        if not told_workers:
            distributed.broadcast(False)  # release the other ranks: distill will not run
        distributed.shutdown()
    return ctx


def int8_misses(ctx: Context, stages: list[Stage]) -> list[str]:
    """A line per target whose shipped deliverable is INT8 although no INT8 configuration met its budget."""
    from pipeline.report.schema import int8_budget_miss
    ran = {s.name for s in stages}
    lines = []
    for t in ctx.targets:
        if f"quantize-{t.name}" not in ran:
            continue
        line = int8_budget_miss(ctx.record(f"quantize-{t.name}")["metrics"])
        shipped = ctx.record(f"compile-{t.name}")["metrics"].get("precision") if f"compile-{t.name}" in ran else None
        if line and shipped != "fp32":
            lines.append(f"{t.name}: {line}")
            log.warning("[%s] %s", t.name, line)
    return lines


def resume_notice(run_dir: Path, stages: list[Stage], force: bool) -> list[str]:
    """What a run into a folder that already holds work will reuse, said before any work is redone."""
    found = [s.name for s in stages if (run_dir / s.name / STAGE_RECORD).is_file()]
    ckpts = sorted((run_dir / ".resume").glob("distill-*.pt")) if (run_dir / ".resume").is_dir() else []
    if not found and not ckpts:
        return []
    if force:
        return [f"run folder {run_dir} holds earlier work ({len(found)} finished stages): --force runs every stage again"]
    lines = []
    if found:
        lines.append(f"resuming run folder {run_dir}: {len(found)} of {len(stages)} stages finished earlier "
                     f"({', '.join(found)}); each is reused if its settings and inputs are unchanged, else run again")
    if ckpts:
        lines.append(f"resuming: an interrupted distillation left a checkpoint ({ckpts[-1].name}); distill continues "
                     f"from it if its settings are unchanged")
    return lines


def _publish_report(run_dir: Path) -> None:
    """Copy the report stage's files to the run folder's top and merge the device reports kept there."""
    from pipeline import device
    for f in ("report.json", "report.md", "report.html", "detections.png"):
        if (run_dir / "report" / f).exists():
            shutil.copyfile(run_dir / "report" / f, run_dir / f)
    for line in device.remerge(run_dir):   # device measurements merged earlier survive a re-run
        log.info(line)


def _distill_worker(ctx: Context, stages: list[Stage]) -> None:
    """A rank other than 0: wait for rank 0 to reach distill, take part if it runs, then return. Its scratch
    folder is inside the run folder (removed before and after: a killed worker leaves nothing elsewhere)."""
    from pipeline import distributed
    try:
        if distributed.broadcast(None):
            stage = next(s for s in stages if s.name == "distill")
            scratch = ctx.run_dir / f".distill-rank{distributed.rank()}.tmp"
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir(parents=True)
            try:
                stage.run(ctx, scratch)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
    finally:
        distributed.shutdown()
