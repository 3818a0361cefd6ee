"""Calibration sets: `calibration/<name>.npy` (the images as stored, NCHW) + `<name>.json` manifest.

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
from pipeline.errors import UserError
from pipeline.hashing import sha256_file

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
    if size < 1:
        raise UserError(f"calibration size {size}", "ask for at least 1 sample (128 to 2048 is typical)")
    if size > len(ds.x_train):
        raise UserError(f"calibration size {size} exceeds the {len(ds.x_train)} training samples", "ask for fewer")
    name = check_name(name or f"{slug(ds.name)}-{size}", "calibration set")
    idx = stratified_indices(ds.y_train, size, seed)
    x = np.ascontiguousarray(ds.x_train[idx])
    out_dir.mkdir(parents=True, exist_ok=True)
    npy, man = out_dir / f"{name}.npy", out_dir / f"{name}.json"
    buf = io.BytesIO()
    np.save(buf, x, allow_pickle=False)
    npy.write_bytes(buf.getvalue())
    counts = np.bincount(ds.y_train[idx], minlength=ds.num_classes)
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "name": name,
        "source": {"data": ds.name, "fingerprint": ds.fingerprint(), "split": "train"},
        "seed": seed, "size": int(len(idx)), "stratified": True,
        "class_counts": counts.tolist(),
        "indices": idx.tolist(),
        "shape": list(x.shape), "dtype": str(x.dtype),
        "file": npy.name, "sha256": sha256_file(npy),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    man.write_text(json.dumps(manifest, indent=1) + "\n")
    return man


def load(name_or_path: str, ds=None, input_shape: list[int] | None = None) -> tuple[np.ndarray, dict]:
    """The verified set (as stored) and its manifest; any mismatch is one clear UserError."""
    npy, man = set_paths(name_or_path)
    fix = f"rebuild it: python -m pipeline calibrate --name {npy.stem}" + (" --data ..." if ds is None else "")
    if not man.exists():
        raise UserError(f"calibration set '{name_or_path}' not found (no {man.name} in {man.parent})", fix)
    try:
        manifest = json.loads(man.read_text())
        expected_sha, shape, dtype = manifest["sha256"], manifest["shape"], manifest["dtype"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(f"calibration manifest {man.name} is unreadable ({e.__class__.__name__})", fix) from None
    if not npy.exists():
        raise UserError(f"calibration file {npy.name} is missing", fix)
    if sha256_file(npy) != expected_sha:
        raise UserError(f"calibration file {npy.name} does not match its manifest's sha256 (truncated or changed)", fix)
    try:
        x = np.load(npy, allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"calibration file {npy.name} is not a readable .npy ({e.__class__.__name__})", fix) from None
    if list(x.shape) != list(shape) or str(x.dtype) != dtype:
        raise UserError(f"calibration file {npy.name} holds {list(x.shape)} {x.dtype}, manifest says {shape} {dtype}", fix)
    if x.ndim != 4 or len(x) == 0:
        raise UserError(f"calibration set {npy.stem} is empty or not NCHW images (shape {list(x.shape)})", fix)
    if input_shape is not None and list(x.shape[1:]) != list(input_shape[1:]):
        raise UserError(f"calibration set {npy.stem} has images {list(x.shape[1:])}, the model takes {list(input_shape[1:])}",
                        fix)
    if ds is not None and manifest["source"].get("fingerprint") != ds.fingerprint():
        raise UserError(f"calibration set {npy.stem} was drawn from '{manifest['source'].get('data')}', not this run's data '{ds.name}'",
                        f"build one from this data: python -m pipeline calibrate --data {ds.source or ds.name}")
    return x, manifest


def resolve(spec: str, ds, seed: int, input_shape: list[int]) -> tuple[np.ndarray, dict, Path]:
    """`auto`: the data's 512-sample set, built on first use. Otherwise the named set, verified."""
    if spec == "auto":
        name = f"{slug(ds.name)}-512"
        npy, man = set_paths(name)
        if not man.exists():
            build(ds, min(512, len(ds.x_train)), seed, name)
        spec = name
    x, manifest = load(spec, ds, input_shape)
    return x, manifest, set_paths(spec)[1]
