"""Image data at real size: folders of photos and memory-mapped `.npy` arrays.

`--data DIR` with `DIR/train/<class>/*` and `DIR/test/<class>/*` (PNG, JPEG, WebP, BMP; any size): each
file is decoded by the bundle's own `preprocess.load_image` (Pillow: to RGB / L, shorter side resized,
centre crop, colour order; the `preprocess` settings or a preset) one at a time into a uint8 `.npy`
per split under the run folder's `.data-cache/`, then memory-mapped: peak memory does not grow with the
number of images, and a second run with the same files and settings decodes nothing. Without a crop
every image must have one size (as stored). The class order is the sorted folder names, or the
`preprocess.class_map` file's (.txt: line i names the folder of class i; .json: {folder: index}), so a
pretrained model's output order (e.g. ImageNet's 1000) is kept when only some classes have folders.

`--data DIR` with `x_train.npy`, `y_train.npy`, `x_test.npy`, `y_test.npy` (optional `classes.txt`):
arrays already at the model's size, memory-mapped (`np.load(mmap_mode="r")`), never read whole.

The preprocessing is recorded in `Dataset.meta["preprocessing"]` (data.json, every bundle's manifest).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.bundle import preprocess
from pipeline.config import slug
from pipeline.data import checks
from pipeline.errors import UserError
from pipeline.hashing import sha256_bytes, sha256_file

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
NPY_FILES = ("x_train.npy", "y_train.npy", "x_test.npy", "y_test.npy")
LAYOUT_FIX = "lay images out as DIR/train/<class>/*.jpg|png|webp and DIR/test/<class>/*"


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def resolve_preprocessing(cfg, files: list[Path]) -> dict:
    """The preprocessing to record and apply: the preset's values, overridden by the settings given.
    `cfg` is a PreprocessConfig (or None: images kept as stored, colour from the files)."""
    base = dict(preprocess.PRESETS[cfg.preset]) if cfg is not None and cfg.preset else {}
    pre = {"preset": cfg.preset if cfg is not None else None, "resize": base.get("resize"),
           "crop": base.get("crop"), "color": base.get("color"), "interpolation": "bilinear (Pillow)"}
    if cfg is not None:
        if cfg.resize is not None:
            pre["resize"] = cfg.resize
        if cfg.crop is not None:
            pre["crop"] = [cfg.crop[0], cfg.crop[-1]]
        if cfg.color is not None:
            pre["color"] = cfg.color
    if pre["color"] is None:
        pre["color"] = "gray" if checks.image_mode(files) == "L" else "rgb"
    if base:
        pre["mean"], pre["std"] = base["mean"], base["std"]
    return pre


def class_order(root: Path, folders: list[str], class_map: str | None) -> tuple[dict[str, int], list[str], dict]:
    """{folder: class index}, the class names in model order, and a record of where the order came from."""
    if not class_map:
        return {f: i for i, f in enumerate(folders)}, list(folders), {"from": "sorted folder names"}
    p = Path(class_map)
    fix = "give a .txt (one folder name per line, in the model's class order) or a .json {folder: index}"
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read class map {p}: {getattr(e, 'strerror', None) or type(e).__name__}", fix) from None
    if p.suffix == ".json":
        try:
            raw = json.loads(text)
            mapping = {str(k): int(v) for k, v in raw.items()}
        except (ValueError, AttributeError, TypeError):
            raise UserError(f"class map {p} is not a JSON object of folder -> integer index", fix) from None
    else:
        names = [ln.split()[0] for ln in text.splitlines() if ln.strip()]
        mapping = {n: i for i, n in enumerate(names)}
    if not mapping or min(mapping.values()) < 0 or len(set(mapping.values())) != len(mapping):
        raise UserError(f"class map {p}: indices must be distinct and >= 0", fix)
    missing = [f for f in folders if f not in mapping]
    if missing:
        raise UserError(f"class map {p} does not name folder(s) {missing[:3]} of {root}", "add them to the map")
    n = max(mapping.values()) + 1
    if n > checks.MAX_CLASSES:
        raise UserError(f"class map {p} implies {n} classes", fix)
    classes = [str(i) for i in range(n)]
    for name, i in mapping.items():
        classes[i] = name
    return mapping, classes, {"from": str(p), "sha256": sha256_file(p), "classes": n}


def _decode_key(files: dict, pre: dict, order: dict) -> str:
    listing = {s: [(f.as_posix(), *_stat(f)) for f in fs] for s, fs in files.items()}
    return sha256_bytes(json.dumps([listing, pre, order], sort_keys=True, default=str).encode())


def _stat(f: Path) -> tuple[int, int]:
    st = f.stat()
    return st.st_size, st.st_mtime_ns


def _decode(path: Path, pre: dict) -> np.ndarray:
    try:
        return preprocess.load_image(path, pre)
    except (OSError, ValueError, SyntaxError) as e:
        first = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise UserError(f"cannot decode image {path}: {first}",
                        "replace or remove the file (it is truncated or not an image)") from None


def _decode_split(files: list[Path], pre: dict, dest: Path | None, split: str, root: Path) -> np.ndarray:
    """Decode `files` one at a time into a uint8 (N, C, h, w) array: a memory-mapped .npy at `dest`, or RAM."""
    first = _decode(files[0], pre)
    shape = (len(files), *first.shape)
    out = (np.lib.format.open_memmap(dest, mode="w+", dtype=np.uint8, shape=shape) if dest is not None
           else np.empty(shape, np.uint8))
    out[0] = first
    for i, f in enumerate(files[1:], 1):
        img = _decode(f, pre)
        if img.shape != first.shape:
            raise UserError(f"{root}/{split}: {f.name} is {list(img.shape)} but {files[0].name} is "
                            f"{list(first.shape)}", "resize them to one size, or set --set preprocess.preset=imagenet "
                            "(or preprocess.resize / preprocess.crop)")
        out[i] = img
    if dest is not None:
        out.flush()
        del out
        return np.load(dest, mmap_mode="r")
    return out


def load_image_dir(root: Path, cfg=None, cache_dir: Path | None = None):
    """An image folder (see the module docstring) as a Dataset; decoded into `cache_dir` when given."""
    from pipeline.data import Dataset
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise UserError("reading an image folder needs Pillow", "pip install pillow, or pass --data FILE.npz") from None
    folders = sorted(p.name for p in (root / "train").iterdir() if p.is_dir()) if (root / "train").is_dir() else []
    if not folders:
        raise UserError(f"{root}/train has no class folders", LAYOUT_FIX)
    test_folders = sorted(p.name for p in (root / "test").iterdir() if p.is_dir()) if (root / "test").is_dir() else []
    mapping, classes, order = class_order(root, sorted(set(folders) | set(test_folders)),
                                          cfg.class_map if cfg is not None else None)
    files, labels = {}, {}
    for split in ("train", "test"):
        fs, ys = [], []
        for folder in sorted(p.name for p in (root / split).iterdir() if p.is_dir()) if (root / split).is_dir() else []:
            found = image_files(root / split / folder)
            fs += found
            ys += [mapping[folder]] * len(found)
        if not fs:
            raise UserError(f"{root}/{split} has no images ({', '.join(IMAGE_SUFFIXES)})", LAYOUT_FIX)
        files[split], labels[split] = fs, np.asarray(ys, np.int64)
    pre = resolve_preprocessing(cfg, files["train"] + files["test"])
    dest = None
    if cache_dir is not None:
        dest = Path(cache_dir) / f"{slug(root.name)}-{_decode_key(files, pre, order)[:16]}"
        dest.mkdir(parents=True, exist_ok=True)
    x = {}
    for split in ("train", "test"):
        npy = dest / f"x_{split}.npy" if dest is not None else None
        if npy is not None and (dest / "done.json").is_file():
            x[split] = np.load(npy, mmap_mode="r")
        else:
            x[split] = _decode_split(files[split], pre, npy, split, root)
    if dest is not None:
        (dest / "done.json").write_text(json.dumps({"files": {s: len(f) for s, f in files.items()}, "pre": pre}))
    checks.check_same_shape(str(root), x["train"], x["test"])
    c = x["train"].shape[1]
    mean, std = pre.pop("mean", (0.5,) * c), pre.pop("std", (0.5,) * c)
    meta = {"preprocessing": pre, "class_order": order,
            "files": {s: len(f) for s, f in files.items()}}
    return Dataset(root.name, x["train"], labels["train"], x["test"], labels["test"], classes, tuple(mean),
                   tuple(std), source=str(root), meta=meta)


def is_npy_dir(root: Path) -> bool:
    return all((root / f).is_file() for f in NPY_FILES)


def load_npy_dir(root: Path, cfg=None):
    """x_train.npy, y_train.npy, x_test.npy, y_test.npy (memory-mapped) and an optional classes.txt."""
    from pipeline.data import Dataset
    arrays = {}
    for f in NPY_FILES:
        try:
            arrays[f[:-4]] = np.load(root / f, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {root / f}: {type(e).__name__}", "save it with numpy.save") from None
    for split in ("train", "test"):
        checks.check_images(f"{root}/x_{split}.npy", arrays[f"x_{split}"][:1])
        checks.check_labels(f"{root}/y_{split}.npy", np.asarray(arrays[f"y_{split}"]), len(arrays[f"x_{split}"]))
    checks.check_same_shape(str(root), arrays["x_train"], arrays["x_test"])
    y_tr, y_te = (np.asarray(arrays[k], np.int64) for k in ("y_train", "y_test"))
    n = int(max(y_tr.max(), y_te.max())) + 1
    names = root / "classes.txt"
    classes = [ln.strip() for ln in names.read_text().splitlines() if ln.strip()] if names.is_file() else \
        [str(i) for i in range(n)]
    if len(classes) < n:
        raise UserError(f"{names} names {len(classes)} classes but labels reach {n - 1}", "one class name per line")
    c = arrays["x_train"].shape[1]
    base = preprocess.PRESETS[cfg.preset] if cfg is not None and cfg.preset else {}
    return Dataset(root.name, arrays["x_train"], y_tr, arrays["x_test"], y_te, classes,
                   tuple(base.get("mean", (0.5,) * c)), tuple(base.get("std", (0.5,) * c)), source=str(root),
                   meta={"preprocessing": {"preset": base and cfg.preset or None, "stored": "as the .npy arrays"}})
