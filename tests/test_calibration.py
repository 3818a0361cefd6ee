"""Calibration sets: stratified, reproducible, verified (hash, shape, source) before use."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from pipeline.compress import calibration
from pipeline.errors import UserError


def test_build_and_load_roundtrip(fmnist, tmp_path):
    man = calibration.build(fmnist, 100, seed=3, name="c100", out_dir=tmp_path)
    x, m = calibration.load(str(tmp_path / "c100"), fmnist, [1, 1, 28, 28])
    assert x.shape == (100, 1, 28, 28) and x.dtype == np.uint8
    assert m["class_counts"] == [10] * 10 and m["seed"] == 3 and len(m["indices"]) == 100
    assert np.array_equal(x, fmnist.x_train[m["indices"]])
    # same seed, same set
    calibration.build(fmnist, 100, seed=3, name="again", out_dir=tmp_path)
    assert json.loads(man.read_text())["sha256"] == json.loads((tmp_path / "again.json").read_text())["sha256"]


def test_refuses_truncated_missing_wrong_shape_and_foreign(fmnist, tmp_path):
    calibration.build(fmnist, 50, seed=0, name="c", out_dir=tmp_path)
    spec = str(tmp_path / "c")
    with pytest.raises(UserError, match="has images"):
        calibration.load(spec, fmnist, [1, 3, 32, 32])
    other = type(fmnist)("other", fmnist.x_train[:10], fmnist.y_train[:10], fmnist.x_test[:10],
                         fmnist.y_test[:10], fmnist.classes, fmnist.mean, fmnist.std)
    with pytest.raises(UserError, match="drawn from 'fashion-mnist'"):
        calibration.load(spec, other, [1, 1, 28, 28])
    npy = tmp_path / "c.npy"
    npy.write_bytes(npy.read_bytes()[:-100])
    with pytest.raises(UserError, match="does not match its manifest's sha256"):
        calibration.load(spec, fmnist)
    npy.unlink()
    with pytest.raises(UserError, match="is missing"):
        calibration.load(spec, fmnist)
    with pytest.raises(UserError, match="not found"):
        calibration.load(str(tmp_path / "nope"), fmnist)


def test_empty_set_refused(fmnist, tmp_path):
    with pytest.raises(UserError, match="calibration size 0"):
        calibration.build(fmnist, 0, seed=0, out_dir=tmp_path)
    # a hand-made empty set with a consistent manifest is still refused
    np.save(tmp_path / "e.npy", np.zeros((0, 1, 28, 28), np.uint8))
    from pipeline.hashing import sha256_file
    (tmp_path / "e.json").write_text(json.dumps({"sha256": sha256_file(tmp_path / "e.npy"), "shape": [0, 1, 28, 28],
                                                 "dtype": "uint8", "source": {}}))
    with pytest.raises(UserError, match="empty"):
        calibration.load(str(tmp_path / "e"))


@settings(max_examples=60, deadline=None)
@given(size=st.integers(1, 300), seed=st.integers(0, 2**31 - 1))
def test_stratified_indices_properties(fmnist, size, seed):
    idx = calibration.stratified_indices(fmnist.y_train, size, seed)
    assert len(idx) == size and len(np.unique(idx)) == size and np.all(np.diff(idx) > 0)
    counts = np.bincount(fmnist.y_train[idx], minlength=10)
    assert counts.max() - counts.min() <= 1
    assert np.array_equal(idx, calibration.stratified_indices(fmnist.y_train, size, seed))


@settings(max_examples=40, deadline=None)
@given(flip=st.integers(0, 10_000))
def test_any_single_byte_change_is_caught(fmnist, tmp_path_factory, flip):
    d = tmp_path_factory.mktemp("flip")
    calibration.build(fmnist, 20, seed=1, name="f", out_dir=d)
    npy = d / "f.npy"
    raw = bytearray(npy.read_bytes())
    raw[flip % len(raw)] ^= 0xFF
    npy.write_bytes(bytes(raw))
    with pytest.raises(UserError):
        calibration.load(str(d / "f"), fmnist)


def test_calibrate_again_rewrites_nothing(fmnist, tmp_path):
    """Asking for the set that is already there leaves its files untouched (committed sets stay as they are);
    another seed rewrites them."""
    man, written = calibration.build_set(fmnist, 40, seed=2, name="same", out_dir=tmp_path)
    data = tmp_path / "same.npy"
    assert written and data.is_file()
    stamps = (man.stat().st_mtime_ns, data.stat().st_mtime_ns, man.read_text())
    time.sleep(0.01)
    assert calibration.build_set(fmnist, 40, seed=2, name="same", out_dir=tmp_path) == (man, False)
    assert (man.stat().st_mtime_ns, data.stat().st_mtime_ns, man.read_text()) == stamps
    assert calibration.build_set(fmnist, 40, seed=3, name="same", out_dir=tmp_path) == (man, True)
    assert man.read_text() != stamps[2]
