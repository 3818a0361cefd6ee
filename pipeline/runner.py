"""The stage contract and the loop that runs stages into a run directory.

A stage declares its inputs (names of earlier stages) and the slice of config it reads. Its
fingerprint hashes that slice, the sha256 of its input artifacts and the package version. A stage
folder holding a finished `stage.json` with the same fingerprint is reused; otherwise the stage runs
in a temporary folder that is renamed into place only when it succeeded.
"""
from __future__ import annotations

import fcntl
import hashlib
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
from pipeline.errors import UserError

STAGE_RECORD = "stage.json"
log = logging.getLogger("pipeline")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


class Progress:
    """One line per step of long work: stage, step i/n, extra fields, ETA. Also goes to the log file."""

    def __init__(self, stage: str, total: int, unit: str = "step", every_s: float = 5.0):
        self.stage, self.total, self.unit, self.every_s = stage, max(1, total), unit, every_s
        self.t0 = time.monotonic()
        self.last = 0.0

    def update(self, done: int, force: bool = False, **fields: Any) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.every_s and done < self.total:
            return
        self.last = now
        elapsed = now - self.t0
        eta = elapsed / done * (self.total - done) if done else float("nan")
        extra = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())
        log.info("[%s] %s %d/%d %s elapsed %s ETA %s", self.stage, self.unit, done, self.total, extra,
                 _fmt_s(elapsed), _fmt_s(eta))


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
        return read_json(p)

    def artifact(self, stage: str, filename: str) -> Path:
        p = self.run_dir / stage / filename
        if not p.exists():
            raise UserError(f"missing artifact {stage}/{filename} in {self.run_dir}", "re-run with --force")
        return p


class Stage:
    """Subclasses set `name`, `inputs`, and implement `config_slice` and `run`."""

    name: str = ""
    inputs: tuple[str, ...] = ()
    target: Optional[Target] = None

    def config_slice(self, ctx: Context) -> dict:
        return {}

    def run(self, ctx: Context, out: Path) -> dict:
        """Do the work, writing files into `out`; return the stage's metrics."""
        raise NotImplementedError

    def fingerprint(self, ctx: Context) -> str:
        inputs = {name: ctx.record(name)["outputs"] for name in self.inputs}
        return sha256_json({"config": self.config_slice(ctx), "inputs": inputs, "version": __version__})


def cached_record(stage: Stage, ctx: Context, fingerprint: Optional[str] = None) -> Optional[dict]:
    """The stage's finished record if its fingerprint still matches, else None."""
    try:
        rec = read_json(ctx.stage_dir(stage.name) / STAGE_RECORD)
    except (OSError, json.JSONDecodeError):
        return None
    fp = fingerprint or stage.fingerprint(ctx)
    return rec if rec.get("status") == "done" and rec.get("fingerprint") == fp else None


def run_stage(stage: Stage, ctx: Context, force: bool = False) -> dict:
    final = ctx.stage_dir(stage.name)
    fp = stage.fingerprint(ctx)
    rec = None if force else cached_record(stage, ctx, fp)
    if rec is not None:
        log.info("[%s] cached (fingerprint %s)", stage.name, fp[:12])
        ctx.statuses[stage.name] = "cached"
        return rec
    tmp = ctx.run_dir / f".{stage.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    log.info("[%s] running", stage.name)
    t0 = time.monotonic()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    try:
        metrics = stage.run(ctx, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    outputs = {str(p.relative_to(tmp)): sha256_file(p)
               for p in sorted(tmp.rglob("*")) if p.is_file() and p.name != STAGE_RECORD}
    rec = {
        "stage": stage.name,
        "status": "done",
        "fingerprint": fp,
        "version": __version__,
        "target": stage.target.name if stage.target else None,
        "inputs": {name: ctx.record(name)["outputs"] for name in stage.inputs},
        "config": stage.config_slice(ctx),
        "outputs": outputs,
        "started": started,
        "wall_s": round(time.monotonic() - t0, 3),
        "metrics": metrics,
    }
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
    term = logging.StreamHandler(sys.stderr)
    term.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    root.addHandler(term)
    if run_dir is not None:
        fh = logging.FileHandler(run_dir / "log.txt")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root.addHandler(fh)
