"""Data that would train for minutes on garbage, or exhaust memory, is refused at load with its own
message: non-finite pixels or statistics, labels that are not class indices, splits that differ."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.data import resolve_data
from pipeline.errors import UserError


def npz(tmp_path, **over):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 255, (8, 1, 4, 4), dtype=np.uint8), "y_train": np.arange(8) % 3,
              "x_test": rng.integers(0, 255, (4, 1, 4, 4), dtype=np.uint8), "y_test": np.arange(4) % 3}
    arrays.update(over)
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    return str(path)


F = np.float32
CASES = {
    "scalar labels": ({"y_train": np.array(3)}, ["scalar"]),
    "float labels": ({"y_train": (np.arange(8) % 3).astype(F)}, ["float32", "integer"]),
    "string labels": ({"y_train": np.array(["cat"] * 8)}, ["text"]),
    "one-hot labels": ({"y_train": np.eye(3, dtype=np.int64)[np.arange(8) % 3]}, ["one-hot"]),
    "negative label": ({"y_test": np.array([0, 1, -1, 2])}, ["-1", "negative"]),
    "huge label": ({"y_train": np.array([0, 1, 2, 3, 4, 5, 6, 10**12])}, ["1000000000000", "classes"]),
    "NaN pixels": ({"x_train": np.full((8, 1, 4, 4), np.nan, F), "x_test": np.zeros((4, 1, 4, 4), F)}, ["NaN"]),
    "inf pixels": ({"x_train": np.zeros((8, 1, 4, 4), F), "x_test": np.full((4, 1, 4, 4), np.inf, F)}, ["infinite"]),
    "train/test shapes differ": ({"x_test": np.zeros((4, 1, 5, 5), np.uint8)}, ["[1, 4, 4]", "[1, 5, 5]"]),
    "train/test dtypes differ": ({"x_test": np.zeros((4, 1, 4, 4), F)}, ["uint8", "float32"]),
    "nan mean in the file": ({"mean": np.array([np.nan])}, ["mean", "NaN"]),
    "zero std in the file": ({"std": np.array([0.0])}, ["std", "<= 0"]),
    "scalar classes": ({"classes": np.array("a")}, ["classes"]),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_npz_is_refused_at_load(tmp_path, case):
    over, words = CASES[case]
    with pytest.raises(UserError) as e:
        resolve_data(npz(tmp_path, **over))
    for w in words:
        assert w.lower() in e.value.problem.lower(), (case, e.value.problem)


@pytest.mark.parametrize("mean, std, word", [([float("nan")], None, "mean"), (None, [float("inf")], "std"),
                                             ([0.5, 0.5], None, "2 values")])
def test_bad_mean_std_flags(tmp_path, mean, std, word):
    with pytest.raises(UserError, match=word):
        resolve_data(npz(tmp_path), mean, std)


def test_good_npz_still_loads(tmp_path):
    ds = resolve_data(npz(tmp_path))
    assert ds.num_classes == 3 and ds.input_shape == (1, 4, 4)


def _png_tree(tmp_path, write):
    from PIL import Image
    root = tmp_path / "imgs"
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(2):
                write(Image, root / split / cls / f"{i}.png", split, cls, i)
    return root


def test_corrupt_png_is_one_error(tmp_path):
    def write(Image, path, split, cls, i):
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(path)
        if (split, cls, i) == ("train", "b", 1):
            path.write_bytes(path.read_bytes()[:20])
    root = _png_tree(tmp_path, write)
    with pytest.raises(UserError, match="1.png"):
        resolve_data(str(root))


def test_palette_png_is_read_as_colours_not_indices(tmp_path):
    """A palette image whose entry 1 is pure red: read as RGB (255, 0, 0), never as the index 1."""
    def write(Image, path, split, cls, i):
        img = Image.fromarray(np.ones((4, 4), np.uint8), mode="P")
        img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
        img.save(path)
    ds = resolve_data(str(_png_tree(tmp_path, write)))
    assert ds.input_shape == (3, 4, 4)
    assert ds.x_train[0, :, 0, 0].tolist() == [255, 0, 0]


def test_grayscale_palette_png_is_read_as_gray_levels(tmp_path):
    def write(Image, path, split, cls, i):
        img = Image.fromarray(np.full((4, 4), 2, np.uint8), mode="P")
        img.putpalette([v for g in range(256) for v in (255 - g,) * 3])
        img.save(path)
    ds = resolve_data(str(_png_tree(tmp_path, write)))
    assert ds.input_shape == (1, 4, 4) and int(ds.x_train[0, 0, 0, 0]) == 253


def test_image_folders_of_different_shapes_are_refused(tmp_path):
    def write(Image, path, split, cls, i):
        Image.fromarray(np.zeros((4, 4) if split == "train" else (6, 6), np.uint8)).save(path)
    with pytest.raises(UserError, match="train images"):
        resolve_data(str(_png_tree(tmp_path, write)))
