"""Calibration sets: `<name>.npy` (one input, as stored) or `<name>.npz` (one array per named input) + `<name>.json`.

The manifest records the source data's fingerprint, the training-split indices, the seed, shape,
dtype and the sha256 of the .npy file. `load` verifies all of it before a set is used.
"""
from __future__ import annotations

import io
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from pipeline.config import CALIBRATION_DIR, ROOT, check_name, slug
from pipeline.data.inputs import Inputs
from pipeline.errors import UserError
from pipeline.hashing import sha256_bytes, sha256_file

MANIFEST_VERSION = 1


def set_paths(spec: str) -> tuple[Path, Path]:
    """A bare name lives in calibration/; a path is taken from the working directory, then the repo."""
    base = spec[:-5] if spec.endswith((".json")) else spec[:-4] if spec.endswith(".npy") else spec
    p = Path(base)
    if len(p.parts) == 1:
        p = CALIBRATION_DIR / p
    elif not p.is_absolute() and not Path(base + ".json").exists():
        p = ROOT / p
    return Path(f"{p}.npy"), Path(f"{p}.json")


def stratified_indices(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """`size` indices with classes as equally represented as the split allows, sorted."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    take, k = [], 0
    while len(take) < size and any(k < len(p) for p in per):
        take.extend(int(p[k]) for p in per if k < len(p))
        k += 1
    return np.sort(np.asarray(take[:size], dtype=np.int64))


def build(ds, size: int, seed: int, name: str | None = None, out_dir: Path = CALIBRATION_DIR) -> Path:
    """Write the calibration set `name` (default <data>-<size>) and its manifest; returns the manifest."""
    return build_set(ds, size, seed, name, out_dir)[0]


def build_set(ds, size: int, seed: int, name: str | None = None, out_dir: Path = CALIBRATION_DIR) -> tuple[Path, bool]:
    """As build, and whether anything was written: a set equal to the one on disk (same samples, same
    bytes) leaves both files as they are, so re-running `calibrate` does not touch committed files."""
    if size < 1:
        raise UserError(f"calibration size {size}", "ask for at least 1 sample (128 to 2048 is typical)")
    if size > len(ds.x_train):
        raise UserError(f"calibration size {size} exceeds the {len(ds.x_train)} training samples", "ask for fewer")
    name = check_name(name or f"{slug(ds.name)}-{size}", "calibration set")
    labels = ds.y_train.dtype.kind in "iu" and ds.y_train.ndim == 1
    idx = (stratified_indices(ds.y_train, size, seed) if labels else
           np.sort(np.random.default_rng(seed).choice(len(ds.x_train), size, replace=False)))
    x = ds.x_train[idx]
    out_dir.mkdir(parents=True, exist_ok=True)
    single = x.positional
    data, man = out_dir / (f"{name}.npy" if single else f"{name}.npz"), out_dir / f"{name}.json"
    buf = io.BytesIO()
    if single:
        np.save(buf, np.ascontiguousarray(x.single), allow_pickle=False)
    else:
        np.savez(buf, **{k: np.ascontiguousarray(v) for k, v in x.items()})
    content = buf.getvalue()
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "name": name,
        "source": {"data": ds.name, "fingerprint": ds.fingerprint(), "split": "train"},
        "seed": seed, "size": int(len(idx)), "stratified": bool(labels),
        "class_counts": np.bincount(ds.y_train[idx], minlength=ds.num_classes).tolist() if labels else None,
        "indices": idx.tolist(),
        "shape": list(x.single.shape) if single else None, "dtype": str(x.single.dtype) if single else None,
        "inputs": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in x.items()},
        "file": data.name, "sha256": sha256_bytes(content),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if unchanged(data, man, content, manifest):
        return man, False
    data.write_bytes(content)
    man.write_text(json.dumps(manifest, indent=1) + "\n")
    return man, True


def unchanged(data: Path, man: Path, content: bytes, manifest: dict) -> bool:
    """Whether `data` holds exactly `content` and `man` the same manifest but for its creation time."""
    if not (data.is_file() and man.is_file()) or data.stat().st_size != len(content) or data.read_bytes() != content:
        return False
    try:
        old = json.loads(man.read_text())
    except (OSError, ValueError):
        return False
    return {k: v for k, v in old.items() if k != "created"} == {k: v for k, v in manifest.items() if k != "created"}


def load(name_or_path: str, ds=None, input_shape: list[int] | None = None) -> tuple[Inputs, dict]:
    """The verified set (as stored, as Inputs) and its manifest; any mismatch is one clear UserError."""
    npy, man = set_paths(name_or_path)
    fix = f"rebuild it: python -m pipeline calibrate --name {npy.stem}" + (" --data ..." if ds is None else "")
    if not man.exists():
        raise UserError(f"calibration set '{name_or_path}' not found (no {man.name} in {man.parent})", fix)
    try:
        manifest = json.loads(man.read_text())
        expected_sha = manifest["sha256"]
        data = man.parent / Path(manifest.get("file") or npy.name).name
        inputs = manifest.get("inputs") or {"input": {"shape": manifest["shape"], "dtype": manifest["dtype"]}}
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"calibration manifest {man.name} is unreadable ({e.__class__.__name__})", fix) from None
    if not data.exists():
        raise UserError(f"calibration file {data.name} is missing", fix)
    if sha256_file(data) != expected_sha:
        raise UserError(f"calibration file {data.name} does not match its manifest's sha256 (truncated or changed)", fix)
    try:
        if data.suffix == ".npz":
            with np.load(data, allow_pickle=False) as z:
                x = Inputs({k: z[k] for k in z.files})
        else:
            x = Inputs.of(np.load(data, allow_pickle=False))
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001
        raise UserError(f"calibration file {data.name} is not readable ({e.__class__.__name__})", fix) from None
    if sorted(x.names) != sorted(inputs) and not (x.positional and len(inputs) == 1):
        raise UserError(f"calibration file {data.name} holds inputs {x.names}, its manifest says {sorted(inputs)}", fix)
    for (k, v), want in zip(x.items(), inputs.values()):
        if list(v.shape) != list(want["shape"]) or str(v.dtype) != want["dtype"]:
            raise UserError(f"calibration file {data.name} holds {list(v.shape)} {v.dtype}, manifest says "
                            f"{want['shape']} {want['dtype']}", fix)
    if len(x) == 0:
        raise UserError(f"calibration set {data.stem} is empty", fix)
    if input_shape is not None and x.positional and list(x.single.shape[1:]) != list(input_shape[1:]):
        raise UserError(f"calibration set {data.stem} has images {list(x.single.shape[1:])}, the model takes "
                        f"{list(input_shape[1:])}", fix)
    if ds is not None:
        want = ds.x_train.shapes()
        got = dict(zip(ds.x_train.names, x.shapes().values())) if x.positional else x.shapes()
        if got != want:
            raise UserError(f"calibration set {data.stem} has inputs {got}, the model takes {want}", fix)
    if ds is not None and manifest["source"].get("fingerprint") != ds.fingerprint():
        raise UserError(f"calibration set {data.stem} was drawn from '{manifest['source'].get('data')}', not this run's data '{ds.name}'",
                        f"build one from this data: python -m pipeline calibrate --data {ds.source or ds.name}")
    if ds is not None and x.positional and not ds.x_train.positional:
        x = Inputs({ds.x_train.names[0]: x.single})
    return x, manifest


def resolve(spec: str, ds, seed: int, input_shape: list[int], scratch: Path | None = None) -> tuple[Inputs, dict, Path]:
    """`auto`: the data's committed 512-sample set under calibration/ if there is one, else one built on first
    use in `scratch` (the run folder's calibration/; the repository's when no scratch is given). Otherwise
    the named set, verified."""
    if spec == "auto":
        name = f"{slug(ds.name)}-512"
        _, man = set_paths(name)
        if not man.exists():
            where = scratch or CALIBRATION_DIR
            spec = str(where / name)
            if not (where / f"{name}.json").exists():
                build(ds, min(512, len(ds.x_train)), seed, name, out_dir=where)
        else:
            spec = name
    x, manifest = load(spec, ds, input_shape)
    return x, manifest, set_paths(spec)[1]
