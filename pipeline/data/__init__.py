"""Resolve `--data` specs into arrays.

Forms: `fashion-mnist` (the default; Debian's `dataset-fashion-mnist` package, or a folder named by
$EDGE_COMPRESS_FASHION_MNIST holding the four idx .gz files), `FILE.npz` (x_train, y_train, x_test,
y_test; NCHW float32 or uint8, int labels; optional `classes`, `mean`, `std`) and `DIR` (DIR/train/<class>/*.png
and DIR/test/<class>/*.png).
Images are kept as stored (uint8 or float32, NCHW); `normalize` turns a batch into model input.
"""
from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.data import checks
from pipeline.errors import UserError

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
FASHION_MNIST_CLASSES = [
    "t-shirt/top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
]
# Per-pixel statistics of the Fashion-MNIST training split, on the 0..1 scale.
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)


@dataclass
class Dataset:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def fingerprint(self) -> str:
        """sha256 over the arrays, mean, std and classes: identifies the data in stage fingerprints."""
        if "_arrays_hash" not in self.meta:  # arrays are never modified after loading: hash them once
            h = hashlib.sha256()
            for a in (self.x_train, self.y_train, self.x_test, self.y_test):
                h.update(str((a.dtype, a.shape)).encode())
                h.update(np.ascontiguousarray(a).tobytes())
            self.meta["_arrays_hash"] = h
        h = self.meta["_arrays_hash"].copy()
        h.update(repr((self.mean, self.std, self.classes)).encode())
        return h.hexdigest()

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """Stored images -> float32 model input: scale uint8 to 0..1, then (x - mean) / std."""
        return normalize(x, self.mean, self.std)


def normalize(x: np.ndarray, mean, std) -> np.ndarray:
    x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    c = x.shape[1]
    m = np.asarray(mean, np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std, np.float32).reshape(1, -1, 1, 1)
    if m.shape[1] not in (1, c) or s.shape[1] not in (1, c):
        raise UserError(f"--mean/--std have {m.shape[1]}/{s.shape[1]} values but the images have {c} channels",
                        "give one value per channel (or one for all)")
    return (x - m) / s


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(root: str | None = None) -> Dataset:
    candidates = [root] if root else [os.environ.get("EDGE_COMPRESS_FASHION_MNIST"), *FASHION_MNIST_DIRS]
    for c in filter(None, candidates):
        d = Path(c)
        if (d / "train-images-idx3-ubyte.gz").exists():
            x_tr = _read_idx(d / "train-images-idx3-ubyte.gz")[:, None]
            y_tr = _read_idx(d / "train-labels-idx1-ubyte.gz").astype(np.int64)
            x_te = _read_idx(d / "t10k-images-idx3-ubyte.gz")[:, None]
            y_te = _read_idx(d / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
            return Dataset("fashion-mnist", x_tr, y_tr, x_te, y_te, list(FASHION_MNIST_CLASSES),
                           FASHION_MNIST_MEAN, FASHION_MNIST_STD, source="fashion-mnist")
    raise UserError("Fashion-MNIST not found (looked in /usr/share/datasets/fashion-mnist)",
                    "run `apt-get install dataset-fashion-mnist`, set EDGE_COMPRESS_FASHION_MNIST, or pass --data")


def _check_arrays(name: str, x: np.ndarray, y: np.ndarray) -> None:
    if x.ndim != 4:
        raise UserError(f"{name}: images have shape {x.shape}, expected 4-D NCHW",
                        "store images as (N, C, H, W) arrays")
    if x.dtype not in (np.uint8, np.float32):
        raise UserError(f"{name}: images are {x.dtype}", "store images as uint8 or float32")
    if y.ndim != 1 or len(y) != len(x):
        raise UserError(f"{name}: {len(y)} labels for {len(x)} images", "give one integer label per image")
    if len(x) == 0:
        raise UserError(f"{name}: no images", "the split needs at least one image")


def load_npz(path: Path) -> Dataset:
    try:
        z = np.load(path, allow_pickle=False)
        arrays = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 -- any unreadable file is the same user error
        raise UserError(f"cannot read data file {path}: {e.__class__.__name__}",
                        "pass an .npz written by numpy.savez with x_train, y_train, x_test, y_test") from None
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in arrays]
    if missing:
        raise UserError(f"data file {path} lacks {', '.join(missing)}",
                        "save x_train, y_train, x_test, y_test with numpy.savez")
    for split in ("train", "test"):
        checks.check_split(f"{path}: {split}", arrays[f"x_{split}"], arrays[f"y_{split}"])
    checks.check_same_shape(str(path), arrays["x_train"], arrays["x_test"])
    y_all = np.concatenate([arrays["y_train"], arrays["y_test"]]).astype(np.int64)
    n_cls = int(y_all.max()) + 1
    classes = checks.class_names(arrays, y_all)
    if y_all.min() < 0 or n_cls > len(classes):
        raise UserError(f"data file {path}: labels span 0..{n_cls - 1} but {len(classes)} classes are named",
                        "labels must be 0..len(classes)-1")
    c = arrays["x_train"].shape[1]
    mean, std = checks.stats(arrays, "mean", c), checks.stats(arrays, "std", c)
    return Dataset(path.stem, arrays["x_train"], arrays["y_train"].astype(np.int64), arrays["x_test"],
                   arrays["y_test"].astype(np.int64), classes, mean, std, source=str(path))


def load_image_dir(root: Path) -> Dataset:
    try:
        from PIL import Image
    except ImportError:
        raise UserError("reading an image folder needs Pillow", "pip install pillow, or pass --data FILE.npz") from None
    splits = {}
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir()) if (root / "train").is_dir() else []
    if not classes:
        raise UserError(f"{root}/train has no class folders", "lay images out as DIR/train/<class>/*.png and DIR/test/<class>/*.png")
    mode = checks.image_mode(f for s in ("train", "test") for c in classes for f in sorted((root / s / c).glob("*.png")))
    for split in ("train", "test"):
        xs, ys = [], []
        for ci, cls in enumerate(classes):
            for f in sorted((root / split / cls).glob("*.png")):
                xs.append(checks.read_image(f, mode))
                ys.append(ci)
        if not xs:
            raise UserError(f"{root}/{split} has no .png images", "lay images out as DIR/<split>/<class>/*.png")
        shapes = {x.shape for x in xs}
        if len(shapes) > 1:
            raise UserError(f"{root}/{split}: images differ in shape {sorted(shapes)[:3]}", "resize all images to one shape")
        splits[split] = (np.stack(xs).astype(np.uint8), np.asarray(ys, np.int64))
    checks.check_same_shape(str(root), splits["train"][0], splits["test"][0])
    c = splits["train"][0].shape[1]
    return Dataset(root.name, *splits["train"], *splits["test"], classes, (0.5,) * c, (0.5,) * c, source=str(root))


def resolve_data(spec: str | None, mean=None, std=None) -> Dataset:
    if spec in (None, "", "fashion-mnist"):
        ds = load_fashion_mnist()
    else:
        p = Path(spec)
        if p.suffix == ".npz" and p.is_file():
            ds = load_npz(p)
        elif p.is_dir():
            ds = load_image_dir(p)
        elif not p.exists():
            raise UserError(f"data not found: {spec}", "pass --data FILE.npz, --data DIR, or omit it for Fashion-MNIST")
        else:
            raise UserError(f"unsupported data file: {spec}", "pass an .npz file or an image folder")
    if mean is not None:
        ds.mean = tuple(mean)
    if std is not None:
        ds.std = tuple(std)
    checks.check_stats(ds.mean, ds.std, ds.input_shape[0])
    return ds
