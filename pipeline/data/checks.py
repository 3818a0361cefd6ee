"""Checks on loaded data, before any work: small functions over arrays, each problem one UserError.

Called by the loaders in pipeline/data/__init__.py. They refuse what would otherwise train for minutes
on garbage or exhaust memory: non-finite pixels, labels that are not class indices (scalar, float,
string, one-hot, negative, absurdly large), train and test splits that differ in shape or dtype,
non-finite or zero normalization statistics, and image files that cannot be decoded.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from pipeline.errors import UserError

MAX_CLASSES = 100_000        # a label above this is a mistake, not a class: a class list that long is refused
LABEL_FIX = "store labels as one integer class index 0..K-1 per image (shape (N,), e.g. int64)"
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


def check_images(name: str, x: np.ndarray) -> None:
    """NCHW uint8 or float32, at least one image, every float pixel finite."""
    if x.ndim != 4:
        raise UserError(f"{name}: images have shape {x.shape}, expected 4-D NCHW", "store images as (N, C, H, W) arrays")
    if x.dtype not in (np.uint8, np.float32):
        raise UserError(f"{name}: images are {x.dtype}", "store images as uint8 or float32")
    if len(x) == 0:
        raise UserError(f"{name}: no images", "the split needs at least one image")
    if x.dtype == np.float32:
        bad = int(x.size - np.count_nonzero(np.isfinite(x)))
        if bad:
            raise UserError(f"{name}: {bad} pixel value(s) are NaN or infinite",
                            "replace or drop those images; every pixel must be a finite number")


def check_labels(name: str, y: np.ndarray, n_images: int) -> None:
    """One integer class index per image, 0 <= label < MAX_CLASSES."""
    if y.ndim == 0:
        raise UserError(f"{name}: labels are a single scalar ({y!r}), not one label per image", LABEL_FIX)
    if y.ndim == 2 and y.shape[0] == n_images and y.shape[1] > 1:
        raise UserError(f"{name}: labels have shape {y.shape}: one-hot or per-class scores, not class indices",
                        "store y.argmax(1) (one integer class index per image)")
    if y.ndim != 1 or len(y) != n_images:
        raise UserError(f"{name}: {y.shape[0] if y.ndim else 1} labels of shape {y.shape} for {n_images} images",
                        "give one integer label per image")
    if y.dtype.kind in "USO":
        raise UserError(f"{name}: labels are text ({y.dtype}), not class indices",
                        "store the class names in `classes` and the labels as their integer indices")
    if y.dtype.kind == "f":
        raise UserError(f"{name}: labels are {y.dtype} numbers, not integer class indices", LABEL_FIX)
    if y.dtype.kind not in "iu":
        raise UserError(f"{name}: labels are {y.dtype}, not integer class indices", LABEL_FIX)
    if len(y) and int(y.min()) < 0:
        raise UserError(f"{name}: label {int(y.min())} is negative", LABEL_FIX)
    if len(y) and int(y.max()) >= MAX_CLASSES:
        raise UserError(f"{name}: label {int(y.max())} would mean more than {MAX_CLASSES} classes", LABEL_FIX)


def check_same_shape(name: str, x_train: np.ndarray, x_test: np.ndarray) -> None:
    """Train and test images must be of one shape and one stored dtype (they are normalized alike)."""
    if x_train.shape[1:] != x_test.shape[1:] or x_train.dtype != x_test.dtype:
        raise UserError(f"{name}: train images are {list(x_train.shape[1:])} {x_train.dtype} but test images are "
                        f"{list(x_test.shape[1:])} {x_test.dtype}", "store both splits at one shape and dtype")


def check_stats(mean: Sequence[float], std: Sequence[float], channels: int) -> None:
    """Normalization statistics: finite, std > 0, one value per channel (or one for all)."""
    for what, vals in (("mean", mean), ("std", std)):
        vals = list(vals)
        if len(vals) not in (1, channels):
            raise UserError(f"--{what} has {len(vals)} values but the images have {channels} channels",
                            "give one value per channel (or one for all)")
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in vals):
            raise UserError(f"--{what} {vals} holds NaN or infinity", f"give finite numbers for --{what}")
    if any(v <= 0 for v in std):
        raise UserError(f"--std {list(std)} holds a value <= 0", "give positive standard deviations")


# ---------------------------------------------------------------- image files
def image_mode(files: Iterable[Path]) -> str:
    """The mode a folder's images are read in: 'L' when every file is grayscale, else 'RGB' (palette,
    RGBA and the like are converted, never read as raw palette indices)."""
    from PIL import Image, UnidentifiedImageError
    for f in files:
        try:
            with Image.open(f) as img:
                mode = img.mode
                if mode == "P":
                    pal = img.getpalette() or []
                    mode = "L" if all(pal[i] == pal[i + 1] == pal[i + 2] for i in range(0, len(pal) - 2, 3)) else "RGB"
        except (OSError, UnidentifiedImageError, ValueError):
            continue   # read_image names the broken file
        if mode not in GRAY_MODES:
            return "RGB"
    return "L"


def read_image(path: Path, mode: str) -> np.ndarray:
    """One image file as a CHW uint8 array in `mode`; a file Pillow cannot decode is a UserError."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as img:
            arr = np.asarray(img.convert(mode))
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise UserError(f"cannot decode image {path}: {str(e).splitlines()[0][:120] if str(e) else type(e).__name__}",
                        "replace or remove the file (it is truncated or not an image)") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


# ---------------------------------------------------------------- optional arrays of a data file
def stats(arrays: dict, key: str, channels: int) -> tuple[float, ...]:
    """`mean` / `std` of a data file: a 1-D array of numbers (default 0.5 per channel)."""
    if key not in arrays:
        return (0.5,) * channels
    a = np.asarray(arrays[key])
    if a.dtype.kind not in "iuf" or a.ndim > 1:
        raise UserError(f"data file '{key}' is a {a.dtype} array of shape {a.shape}",
                        f"store {key} as one number per channel, e.g. np.array([0.5])")
    return tuple(float(v) for v in a.reshape(-1))


def class_names(arrays: dict, labels: np.ndarray) -> list[str]:
    """`classes` of a data file (one name per class index), else '0'..'K-1' from the labels."""
    if "classes" not in arrays:
        return [str(i) for i in range(int(labels.max()) + 1)]
    a = np.asarray(arrays["classes"])
    if a.ndim != 1 or len(a) > MAX_CLASSES:
        raise UserError(f"data file 'classes' has shape {a.shape}", "store classes as a 1-D array of names")
    return [str(c) for c in a]
