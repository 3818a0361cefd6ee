"""`python -m pipeline verify BUNDLE`: check a hand-off bundle the way the embedded team receives it.

BUNDLE is a run's `handoff/` folder, one target's sub-folder, or `handoff.tar.gz` (extracted to a
temporary folder; members with absolute paths, `..`, links or device files are refused). For every
target folder (one holding a `manifest.json`):

- files: every path the manifest names stays inside the bundle (no absolute path, `..` or link) and
  each listed sha256 matches (a changed or missing file fails, named); a file the manifest does not
  list fails, except what a device build writes (model.plan), which is noted; a malformed manifest is a
  usage error; a tarball that would expand past MAX_FILE_BYTES / MAX_BUNDLE_BYTES is refused unextracted;
- outputs: the deliverable is loaded with its runtime (ONNX -> onnxruntime, .tflite -> LiteRT; a
  TensorRT target's QDQ ONNX, the host proxy the golden outputs came from, in onnxruntime) and its
  outputs for `golden.npz` are compared with the expected ones within the manifest's tolerances
  (`golden.max_abs`, `golden.min_argmax_agreement`). A TensorRT plan is checked only where TensorRT and
  a GPU are present; otherwise the verdict says so. A runtime missing here is "not checked", not a pass;
- latency: p50 of the deliverable on this machine (pipeline.latency.measure), labelled as such;
- the toolchain lock is in the manifest, and no text in the bundle holds an absolute path of a build
  machine (/home, /root, /tmp, /work, /Users, ...).

Exit codes (via the CLI): 0 every check passed, 1 a check failed, 2 a usage error (UserError).
"""
from __future__ import annotations

import contextlib
import gzip
import json
import re
import tarfile
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterator

import numpy as np

from pipeline import backends
from pipeline.errors import UserError
from pipeline.latency import measure
from pipeline.bundle.devicekit import golden_inputs
from pipeline.hashing import sha256_file

MANIFEST = "manifest.json"
UNLISTED_OK = ("manifest.json", "README.md")        # written after the manifest's file list, so not in it
PACKAGING = ("stage.json", "handoff.tar.gz")        # the handoff stage's own record and the tarball
ABSOLUTE_PATH = re.compile(rb"(?<![\w.~-])(/home/|/root/|/tmp/|/work/|/Users/|/private/var/|/var/folders/|/mnt/|"
                           rb"[A-Za-z]:\\Users\\)")
TOOLCHAIN_KEYS = ("python", "edge-compress")
DEVICE_BUILT = ("model.plan", "device_report.json")  # what a device run writes into the bundle: noted, not failed
# A real bundle is a few MB; a tarball is refused, before anything is extracted, past these sizes.
MAX_FILE_BYTES = 512 << 20
MAX_BUNDLE_BYTES = 1 << 30
MAX_MEMBERS = 10_000


@dataclass
class TargetResult:
    """What verify found for one target folder."""

    name: str
    backend: str
    device: str
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    files_listed: int = 0
    sound: list[str] = field(default_factory=list)          # listed files whose sha256 matched
    outputs: str = "not checked"
    latency: str = "not measured"
    engine: str | None = None

    @property
    def ok(self) -> bool:
        return not self.failures


@dataclass
class BundleResult:
    """What verify found for a whole bundle."""

    path: str
    targets: list[TargetResult]
    failures: list[str] = field(default_factory=list)     # bundle-wide (absolute paths)
    warnings: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures and all(t.ok for t in self.targets)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1


# ---------------------------------------------------------------- opening a bundle
def safe_extract(tar_path: Path, dest: Path) -> None:
    """Extract a .tar.gz into dest, refusing any member that could land outside it or is not a plain
    file or folder (absolute paths, `..`, links, devices)."""
    try:
        with tarfile.open(tar_path, "r:*") as tar:
            members = tar.getmembers()
            check_sizes(tar_path, members)
            for m in members:
                if m.name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", m.name) or ".." in PurePosixPath(m.name).parts:
                    raise UserError(f"{tar_path} has an unsafe member path '{m.name}' (absolute or with ..)",
                                    "do not use this archive; ask for the bundle again")
                if not (m.isfile() or m.isdir()):
                    raise UserError(f"{tar_path} has a member '{m.name}' that is not a plain file or folder",
                                    "do not use this archive; ask for the bundle again")
            tar.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise UserError(f"cannot read {tar_path} as a .tar.gz ({e})", "pass an intact handoff.tar.gz") from None


def check_sizes(tar_path: Path, members: list) -> None:
    """Refuse a tarball whose members (sizes from their headers) would expand past the caps."""
    fix = "do not use this archive; ask for the bundle again"
    if len(members) > MAX_MEMBERS:
        raise UserError(f"{tar_path} has {len(members)} members (at most {MAX_MEMBERS})", fix)
    for m in members:
        if m.size > MAX_FILE_BYTES:
            raise UserError(f"{tar_path}: member '{m.name}' would expand to {m.size / 2**20:.0f} MB "
                            f"(at most {MAX_FILE_BYTES / 2**20:.0f} MB per file)", fix)
    total = sum(m.size for m in members)
    if total > MAX_BUNDLE_BYTES:
        raise UserError(f"{tar_path} would expand to {total / 2**20:.0f} MB in all "
                        f"(at most {MAX_BUNDLE_BYTES / 2**20:.0f} MB)", fix)


@contextlib.contextmanager
def open_bundle(path: Path) -> Iterator[Path]:
    """The bundle's folder: `path` itself, or a temporary extraction of a .tar.gz (removed afterwards)."""
    path = Path(path)
    if path.is_dir():
        yield path
    elif path.is_file() and path.name.endswith((".tar.gz", ".tgz", ".tar")):
        with tempfile.TemporaryDirectory(prefix="edge-compress-verify.") as tmp:
            safe_extract(path, Path(tmp))
            yield Path(tmp)
    elif path.exists():
        raise UserError(f"{path} is not a bundle folder or a .tar.gz",
                        "pass a run's handoff/ folder, one target's folder, or handoff.tar.gz")
    else:
        raise UserError(f"{path} does not exist", "pass a run's handoff/ folder, one target's folder, or handoff.tar.gz")


def target_dirs(root: Path) -> list[Path]:
    """Folders holding a manifest.json: root itself, its sub-folders, or those of root/handoff."""
    if (root / MANIFEST).is_file():
        return [root]
    for base in (root, root / "handoff"):
        found = sorted(p.parent for p in base.glob(f"*/{MANIFEST}")) if base.is_dir() else []
        if found:
            return found
    raise UserError(f"no {MANIFEST} in {root} or its sub-folders: not a hand-off bundle",
                    "pass a run's handoff/ folder, one target's folder, or handoff.tar.gz")


def read_manifest(tdir: Path) -> dict:
    try:
        m = json.loads((tdir / MANIFEST).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise UserError(f"cannot read {tdir / MANIFEST}: {str(e)[:200]}", "ask for the bundle again") from None
    if not isinstance(m, dict):
        raise UserError(f"{tdir / MANIFEST} is not a JSON object", "ask for the bundle again")
    for k in ("target", "backend", "deliverable", "files", "golden"):
        if k not in m:
            raise UserError(f"{tdir / MANIFEST} lacks '{k}'", "regenerate the bundle with this version of the tool")
    check_manifest_types(tdir / MANIFEST, m)
    return m


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


def check_manifest_types(where: Path, m: dict) -> None:
    """The manifest fields verify reads have the types it reads them as (one UserError naming the field)."""
    fix = "ask for the bundle again, or regenerate it with this version of the tool"
    for k in ("target", "backend", "deliverable"):
        if not isinstance(m[k], str) or not m[k]:
            raise UserError(f"{where}: '{k}' is {m[k]!r}, not a name", fix)
    files = m["files"]
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise UserError(f"{where}: 'files' is not an object of file name -> sha256 ({type(files).__name__})", fix)
    gold = m["golden"]
    if not isinstance(gold, dict):
        raise UserError(f"{where}: 'golden' is a {type(gold).__name__}, not an object", fix)
    if not isinstance(gold.get("file"), str):
        raise UserError(f"{where}: 'golden' lacks a 'file' name", fix)
    for k in ("max_abs", "min_argmax_agreement"):
        if not _number(gold.get(k)):
            raise UserError(f"{where}: golden '{k}' is {gold.get(k)!r}, not a finite number", fix)
    if m.get("toolchain") is not None and not isinstance(m["toolchain"], dict):
        raise UserError(f"{where}: 'toolchain' is a {type(m['toolchain']).__name__}, not an object", fix)


def inside(tdir: Path, name: str) -> bool:
    """True when `name` (as a manifest writes it) is a relative path that stays inside tdir, with no link
    on the way: a manifest can never make verify read or vouch for a file outside the bundle."""
    parts = PurePosixPath(name).parts
    if not name or "\x00" in name or "\\" in name or PurePosixPath(name).is_absolute() or ".." in parts \
            or re.match(r"^[A-Za-z]:", name):
        return False
    p, base = tdir, tdir.resolve()
    for part in parts:
        p = p / part
        if p.is_symlink():
            return False
    return p.resolve().is_relative_to(base)


def check_paths(tdir: Path, manifest: dict, res: TargetResult) -> dict:
    """The listed files whose paths stay inside the bundle (failures name the others), and a failure when
    the deliverable or the golden file is not listed (it would go unchecked)."""
    safe = {}
    for name, want in manifest["files"].items():
        if inside(tdir, name):
            safe[name] = want
        else:
            res.failures.append(f"path outside the bundle (or through a link) in manifest.json: {name!r}")
    for what, name in (("deliverable", manifest["deliverable"]), ("golden file", manifest["golden"]["file"])):
        if not inside(tdir, name):
            res.failures.append(f"{what} path outside the bundle (or through a link): {name!r}")
        elif name not in manifest["files"]:
            res.failures.append(f"{what} {name} is not listed in the manifest's files (its sha256 is unchecked)")
    return safe


# ---------------------------------------------------------------- checks
def check_files(tdir: Path, manifest: dict, res: TargetResult) -> None:
    """Every listed path stays inside the bundle and its sha256 matches; a file the manifest does not list
    fails (a device build's engine is noted); links are refused."""
    res.files_listed = len(manifest["files"])
    for name, want in check_paths(tdir, manifest, res).items():
        p = tdir / name
        if not p.is_file():
            res.failures.append(f"missing file: {name}")
        elif sha256_file(p) != want:
            res.failures.append(f"sha256 mismatch: {name} (changed since the bundle was made)")
        else:
            res.sound.append(name)
    listed = set(manifest["files"]) | set(UNLISTED_OK)
    for p in sorted(tdir.rglob("*")):
        rel = p.relative_to(tdir).as_posix()
        if p.is_symlink():
            res.failures.append(f"link in the bundle: {rel}")
        elif p.is_file() and rel in DEVICE_BUILT and rel not in listed:
            res.warnings.append(f"built on the device, not in the manifest: {rel}")
        elif p.is_file() and rel not in listed:
            res.failures.append(f"extra file not in the manifest: {rel}")
    lock = manifest.get("toolchain") or {}
    missing = [k for k in TOOLCHAIN_KEYS if not lock.get(k)]
    if not lock or missing:
        res.failures.append("toolchain lock missing from manifest.json" + (f" ({', '.join(missing)})" if lock else ""))


def absolute_paths(root: Path) -> list[str]:
    """'file: /home/...' for every file under root that contains an absolute path of a build machine."""
    found = []
    for p in sorted(root.rglob("*")):
        if p.is_symlink() or not p.is_file() or p.name == "handoff.tar.gz":
            continue
        m = ABSOLUTE_PATH.search(p.read_bytes())
        if m:
            found.append(f"{p.relative_to(root).as_posix()}: {m.group(0).decode(errors='replace')}...")
    return found


def check_outputs(tdir: Path, manifest: dict, res: TargetResult, threads: int, runs: int) -> None:
    """Run the deliverable (or the TensorRT target's host proxy) on golden.npz and time it."""
    if manifest["backend"] not in backends.BACKENDS:
        res.failures.append(f"unknown backend '{manifest['backend']}' in manifest.json")
        return
    engine = backends.get(manifest["backend"])
    res.engine = engine.check_bundle_engine(tdir, manifest)
    runtime = engine.host_runtime
    ok, reason = backends.get(runtime).available()
    if not ok:
        res.outputs = f"not checked here: {reason}"
        return
    gold = manifest["golden"]
    unsound = [f for f in (manifest["deliverable"], gold["file"]) if f not in res.sound]
    if unsound:
        res.outputs = f"not checked: {', '.join(unsound)} failed the sha256 check"
        return
    try:
        runner = backends.get(runtime).Runner(tdir / manifest["deliverable"], threads=threads)
        with np.load(tdir / gold["file"]) as g:
            x, y = golden_inputs(g), g["y"]
            boxes = g["boxes"] if "boxes" in g.files else None
        out = runner.run(x)
    except (UserError, KeyError, ValueError) as e:
        res.outputs = "FAILED: could not run"
        res.failures.append(f"{manifest['deliverable']} on {gold['file']}: {getattr(e, 'problem', e)}")
        return
    ok, what = compare(out, y, gold, boxes, manifest.get("detection"))
    proxy = f" (host proxy, {runtime})" if runtime != engine.name else ""
    res.outputs = f"{'OK' if ok else 'FAILED'}{proxy}: {what}"
    if not ok:
        res.failures.append(f"outputs of {manifest['deliverable']} differ from golden.npz beyond the tolerances")
    xb = runner.prepare(x)
    lat = measure(lambda: runner.run_raw(xb), warmup=min(20, runs), runs=runs, threads=threads)
    res.latency = f"p50 {lat['p50_ms']:.3f} ms, p90 {lat['p90_ms']:.3f} ms (this machine, {runtime}, {threads} threads, {runs} runs)"


def compare(out: np.ndarray, y: np.ndarray, gold: dict, boxes=None, detection=None) -> tuple[bool, str]:
    """(within the manifest's golden tolerances?, one line with the figures); a detector on its boxes."""
    if detection is not None and boxes is not None:
        from pipeline.bundle.devicekit import golden_boxes_check
        c = golden_boxes_check(out, y, boxes, detection)
        return c["passed"], (f"{c['matched']} of {c['boxes']} golden boxes found again (class + IoU >= {c['iou']}), "
                             f"{c['found']} found, on {c['n']} golden samples")
    diff = float(np.abs(out - y).max())
    agree = float((out.argmax(1) == y.argmax(1)).mean())
    ok = diff <= gold["max_abs"] and agree >= gold["min_argmax_agreement"]
    return ok, (f"max |diff| {diff:.3g} (tolerance {gold['max_abs']:.3g}), argmax agreement {agree:.3f} "
                f"(min {gold['min_argmax_agreement']:.3g}) on {len(y)} golden samples")


def verify(path: Path, threads: int = 2, runs: int = 100) -> BundleResult:
    """Check a bundle (folder or tarball); see the module docstring."""
    if runs < 5:
        raise UserError(f"--runs {runs} is too few to time", "pass --runs 5 or more")
    if threads < 1:
        raise UserError(f"--threads {threads}: must be at least 1", "pass --threads 1 or more")
    t0 = time.monotonic()
    with open_bundle(path) as root:
        result = BundleResult(str(path), [])
        tdirs = target_dirs(root)
        for tdir in tdirs:
            m = read_manifest(tdir)
            res = TargetResult(m["target"], m["backend"], m.get("device", "?"))
            check_files(tdir, m, res)
            check_outputs(tdir, m, res, threads, runs)
            if res.engine and res.engine.startswith("FAILED"):
                res.failures.append("the TensorRT plan in the bundle does not reproduce golden.npz")
            result.targets.append(res)
        base = root if tdirs == [root] else tdirs[0].parent
        if tdirs != [root]:
            known = {d.name for d in tdirs} | set(PACKAGING)
            result.failures += [f"extra item beside the target folders (not in any manifest): {p.name}"
                                for p in sorted(base.iterdir()) if p.name not in known]
        result.failures += [f"absolute path in {hit}" for hit in absolute_paths(base)]
    result.wall_s = time.monotonic() - t0
    return result


def text(result: BundleResult) -> str:
    """The one-screen verdict."""
    lines = [f"verify {result.path}: {len(result.targets)} target(s)"]
    for t in result.targets:
        status = "OK" if t.ok else "FAILED"
        lines += [f"  {t.name} ({t.backend}, {t.device}): {status}",
                  f"    files    {'OK' if len(t.sound) == t.files_listed else 'FAILED'}: "
                  f"{len(t.sound)} of {t.files_listed} listed files match their sha256",
                  f"    outputs  {t.outputs}",
                  f"    latency  {t.latency}"]
        if t.engine:
            lines.append(f"    engine   {t.engine}")
        lines += [f"    FAIL     {f}" for f in t.failures]
        lines += [f"    note     {w}" for w in t.warnings]
    lines += [f"  FAIL {f}" for f in result.failures] + [f"  note {w}" for w in result.warnings]
    if not result.failures:
        lines.append("  bundle: no absolute build-machine paths; toolchain lock checked per target")
    lines.append(f"verdict: {'OK' if result.ok else 'FAILED'} ({result.wall_s:.1f} s)")
    return "\n".join(lines)
