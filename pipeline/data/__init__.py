"""Resolve `--data` specs into arrays.

Forms: `fashion-detect` (the bundled detection set, pipeline/data/fashion_detect.py), `fine-foods` (real review texts of Debian's r-cran-modeldata, tokenized with the bundled text
model's vocabulary; pipeline/data/fine_foods.py), `fashion-mnist` (the default; Debian's `dataset-fashion-mnist` package, or a folder named by
$EDGE_COMPRESS_FASHION_MNIST holding the four idx .gz files), `FILE.npz` (inputs `x_<split>` for one
input or `<input>_<split>` per named input, e.g. input_ids_train + attention_mask_train; targets
y_train, y_test as the task reads them; optional `classes`, `mean`, `std`) and `DIR`
(DIR/train/<class>/* and DIR/test/<class>/*: photos of any size and format, or x_train.npy ... memory-mapped;
pipeline/data/images.py).
Inputs are kept as stored (pipeline/data/inputs.py); `normalize` turns a batch into model input.
"""
from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.bundle.preprocess import normalize_image
from pipeline.data import checks, detection_dirs
from pipeline.data.inputs import InputSpec, Inputs, kind_of
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
    """Named inputs and targets of the train and test splits (as stored; `normalize` makes model input)."""

    name: str
    x_train: Inputs
    y_train: np.ndarray
    x_test: Inputs
    y_test: np.ndarray
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.x_train, self.x_test = Inputs.of(self.x_train), Inputs.of(self.x_test)
        if self.x_train.names != self.x_test.names:
            raise UserError(f"{self.name}: train inputs {self.x_train.names} but test inputs {self.x_test.names}",
                            "store the same inputs for both splits")
        for k in self.x_train:
            if self.x_train[k].shape[1:] != self.x_test[k].shape[1:]:
                raise UserError(f"{self.name}: input '{k}' is {list(self.x_train[k].shape[1:])} per sample in train but "
                                f"{list(self.x_test[k].shape[1:])} in test", "store both splits at the same shape")

    @property
    def input_names(self) -> list[str]:
        return self.x_train.names

    @property
    def specs(self) -> list[InputSpec]:
        return [InputSpec(k, kind_of(v), str(v.dtype), tuple(int(d) for d in v.shape[1:])) for k, v in self.x_train.items()]

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Per-sample shape of the first input (the only one of an image model)."""
        return self.specs[0].shape

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def fingerprint(self) -> str:
        """sha256 over the arrays, mean, std and classes: identifies the data in stage fingerprints."""
        if "_arrays_hash" not in self.meta:  # arrays are never modified after loading: hash them once
            h = hashlib.sha256()
            for x, y in ((self.x_train, self.y_train), (self.x_test, self.y_test)):
                x.bytes_hash(h)
                h.update(str((y.dtype, y.shape)).encode())
                h.update(np.ascontiguousarray(y).tobytes())
            self.meta["_arrays_hash"] = h
        h = self.meta["_arrays_hash"].copy()
        h.update(repr((self.mean, self.std, self.classes)).encode())
        if self.meta.get("preprocessing"):     # how files were decoded (colour order, resize, crop)
            h.update(repr(sorted(self.meta["preprocessing"].items())).encode())
        return h.hexdigest()

    def normalize(self, x):
        """Stored inputs -> model input: images scaled (uint8 to 0..1) and (x - mean) / std, other floats as
        float32, integer inputs as int64 (never normalized). Inputs in, Inputs out; an array in, an array out."""
        if not isinstance(x, Inputs):
            return normalize(x, self.mean, self.std)
        out = {}
        for k, v in x.items():
            kind = kind_of(v)
            out[k] = (normalize(v, self.mean, self.std) if kind == "image" else
                      v.astype(np.int64) if kind == "int" else v.astype(np.float32))
        return Inputs(out, x.positional)

    def example(self):
        """One normalized test sample as torch tensors (the export / trace example), in input order."""
        return self.normalize(self.x_test[:1]).torch()


def normalize(x: np.ndarray, mean, std) -> np.ndarray:
    """Stored images -> model input; the bundle's preprocess.py (shipped to the device) is the one code."""
    try:
        return normalize_image(x, mean, std)
    except ValueError as e:
        raise UserError(str(e).split(": give")[0].replace("mean/std", "--mean/--std"),
                        "give one value per channel (or one for all)") from None


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


def _split_inputs(arrays: dict, split: str, where: str) -> Inputs:
    """The inputs of one split: `x_<split>` (a single input), or every `<name>_<split>` array but y_<split>."""
    if f"x_{split}" in arrays:
        return Inputs({"input": arrays[f"x_{split}"]}, positional=True)
    suffix = f"_{split}"
    named = {k[: -len(suffix)]: v for k, v in arrays.items() if k.endswith(suffix) and k != f"y_{split}"}
    if not named:
        raise UserError(f"{where} has no inputs for the {split} split",
                        f"store x_{split} (one input) or <input>_{split} arrays named after forward()'s parameters")
    for k, v in named.items():
        if v.ndim < 1 or len(v) == 0:
            raise UserError(f"{where}: {k}_{split} has no samples", "store one row per sample")
        kind_of(v)
    return Inputs(named)


def load_npz(path: Path, task=None) -> Dataset:
    """An .npz of inputs (`x_<split>`, or `<input>_<split>` per named input) and targets `y_<split>`."""
    path = Path(path)
    from pipeline.tasks import resolve
    task = task or resolve("classification")
    try:
        z = np.load(path, allow_pickle=False)
        arrays = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 -- any unreadable file is the same user error
        raise UserError(f"cannot read data file {path}: {e.__class__.__name__}",
                        "pass an .npz written by numpy.savez with x_train, y_train, x_test, y_test") from None
    missing = [k for k in ("y_train", "y_test") if k not in arrays]
    if missing:
        raise UserError(f"data file {path} lacks {', '.join(missing)}",
                        "save the inputs (x_train or <input>_train, ...) and y_train, y_test with numpy.savez")
    x = {split: _split_inputs(arrays, split, str(path)) for split in ("train", "test")}
    y = {split: task.read_targets(arrays[f"y_{split}"], split, str(path)) for split in ("train", "test")}
    for split in ("train", "test"):
        if len(y[split]) != len(x[split]):
            raise UserError(f"{path}: {len(y[split])} targets for {len(x[split])} {split} samples",
                            "give one target per sample")
        for k, v in x[split].items():
            if kind_of(v) == "image":
                checks.check_images(f"{path}: {k}_{split}" if not x[split].positional else f"{path}: {split}", v)
            elif v.dtype.kind == "f" and not np.isfinite(v).all():
                raise UserError(f"{path}: {k}_{split} holds NaN or infinite values", "replace or drop those samples")
    for k in x["train"]:
        checks.check_same_shape(f"{path}: {k}", x["train"][k], x["test"][k])
    classes: list[str] = []
    if y["train"].dtype.kind in "iu":
        y_all = np.concatenate([y["train"], y["test"]])
        classes = checks.class_names(arrays, y_all)
        if int(y_all.max()) >= len(classes):
            raise UserError(f"data file {path}: labels span 0..{int(y_all.max())} but {len(classes)} classes are named",
                            "labels must be 0..len(classes)-1")
    images = [s for s in Dataset("probe", x["test"][:1], y["test"][:1], x["test"][:1], y["test"][:1], [], (), ()).specs
              if s.kind == "image"]
    c = images[0].shape[0] if images else 1
    mean, std = checks.stats(arrays, "mean", c), checks.stats(arrays, "std", c)
    if images:
        checks.check_stats(mean, std, c)
    return Dataset(path.stem, x["train"], y["train"], x["test"], y["test"], classes, mean, std, source=str(path))


def resolve_data(spec: str | None, mean=None, std=None, task=None, preprocess=None, cache_dir=None) -> Dataset:
    """The Dataset a `--data` spec names. `preprocess`: the run's PreprocessConfig (image folders: resize, crop,
    colour, class map; a preset's mean/std for any image data); `cache_dir`: where image folders are decoded."""
    from pipeline.data import images
    folder_only = [k for k in ("resize", "crop", "color", "class_map") if preprocess is not None and
                   getattr(preprocess, k) is not None]
    if spec in (None, "", "fashion-mnist"):
        ds = load_fashion_mnist()
    elif spec == "fine-foods":
        from pipeline.data.fine_foods import dataset
        ds = dataset()
    elif spec == "fashion-detect":
        from pipeline.data.fashion_detect import dataset
        ds = dataset()
    else:
        p = Path(spec)
        if p.suffix == ".npz" and p.is_file():
            ds = load_npz(p, task)
        elif p.is_dir() and detection_dirs.kind(p):
            if getattr(task, "name", None) != "detection":
                raise UserError(f"{spec} is a {detection_dirs.kind(p).upper()} detection dataset",
                                "pass --task detection")
            ds = detection_dirs.load(p, task.cfg.input_size)
        elif p.is_dir() and images.is_npy_dir(p):
            ds = images.load_npy_dir(p, preprocess)
        elif p.is_dir():
            ds = images.load_image_dir(p, preprocess, cache_dir)
            folder_only = []
        elif not p.exists():
            raise UserError(f"data not found: {spec}", "pass --data FILE.npz, --data DIR, or omit it for Fashion-MNIST")
        else:
            raise UserError(f"unsupported data file: {spec}", "pass an .npz file or an image folder")
    if folder_only:
        raise UserError(f"preprocess.{folder_only[0]} applies to image folders, not to --data {spec}",
                        "drop it, or pass --data DIR (DIR/train/<class>/*.jpg, DIR/test/...)")
    if preprocess is not None and preprocess.preset and "preprocessing" not in ds.meta:
        from pipeline.bundle.preprocess import PRESETS
        if any(i.kind == "image" for i in ds.specs):
            ds.mean, ds.std = tuple(PRESETS[preprocess.preset]["mean"]), tuple(PRESETS[preprocess.preset]["std"])
            ds.meta["preprocessing"] = {"preset": preprocess.preset, "stored": "as the data file's arrays"}
    if mean is not None:
        ds.mean = tuple(mean)
    if std is not None:
        ds.std = tuple(std)
    image_specs = [i for i in ds.specs if i.kind == "image"]
    if image_specs:
        checks.check_stats(ds.mean, ds.std, image_specs[0].shape[0])
    return ds
