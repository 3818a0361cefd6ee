"""Image data at real size (pipeline/data/images.py): photo folders of any format and size decoded one file
at a time by the bundle's own preprocess.load_image into memory-mapped arrays, presets, class maps,
memory-mapped .npy folders, and the preprocessing recorded the way a device repeats it."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.bundle import preprocess
from pipeline.config import PreprocessConfig, build_run_config
from pipeline.data import resolve_data
from pipeline.errors import UserError


def photo(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth RGB picture (gradients + a blob), so JPEG/WebP keep it recognisable."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 255 * xx / max(w - 1, 1)
    g = 255 * yy / max(h - 1, 1)
    b = 255 * np.exp(-(((xx - w * (0.3 + 0.1 * seed)) ** 2 + (yy - h / 2) ** 2) / (0.05 * h * w)))
    return np.stack([r, g, b], -1).clip(0, 255).astype(np.uint8)


SIZES = [(300, 600), (480, 320), (256, 256), (333, 500)]
FORMATS = ["jpg", "png", "webp", "jpeg"]


def photo_tree(root, folders=("cat", "dog")):
    from PIL import Image
    k = 0
    for split in ("train", "test"):
        for cls in folders:
            (root / split / cls).mkdir(parents=True)
            for i in range(2 if split == "test" else 3):
                h, w = SIZES[k % len(SIZES)]
                Image.fromarray(photo(h, w, k % 4)).save(root / split / cls / f"{i}.{FORMATS[k % len(FORMATS)]}")
                k += 1
    return root


def test_photos_of_any_size_and_format_are_decoded_with_the_preset(tmp_path):
    root = photo_tree(tmp_path / "photos")
    cache = tmp_path / "run" / ".data-cache"
    ds = resolve_data(str(root), preprocess=PreprocessConfig(preset="imagenet"), cache_dir=cache)
    assert ds.input_shape == (3, 224, 224) and ds.x_train.dtype == np.uint8
    assert len(ds.x_train) == 6 and len(ds.x_test) == 4 and ds.classes == ["cat", "dog"]
    assert ds.mean == (0.485, 0.456, 0.406) and ds.std == (0.229, 0.224, 0.225)
    pre = ds.meta["preprocessing"]
    assert (pre["preset"], pre["resize"], pre["crop"], pre["color"]) == ("imagenet", 256, [224, 224], "rgb")
    # stored in the run's cache, memory-mapped (not a copy in RAM)
    assert not ds.x_train["input"].flags.owndata and list(cache.glob("*/x_train.npy"))
    # each stored image is the bundle's load_image of its file: the code a device runs
    files = sorted((root / "train").glob("*/*"))
    for i, f in enumerate(files):
        np.testing.assert_array_equal(ds.x_train[i], preprocess.load_image(f, pre))


def test_resize_and_crop_follow_torchvision_conventions(tmp_path):
    """Shorter side to 256 keeping the aspect ratio, then the centre 224 x 224: checked against Pillow directly."""
    from PIL import Image
    img = photo(300, 600, 1)
    got = preprocess.load_image(img, {"resize": 256, "crop": [224, 224], "color": "rgb"})
    ref = Image.fromarray(img).resize((512, 256), Image.BILINEAR)
    ref = np.asarray(ref)[16:240, 144:368].transpose(2, 0, 1)
    np.testing.assert_array_equal(got, ref)
    bgr = preprocess.load_image(img, {"resize": 256, "crop": [224, 224], "color": "bgr"})
    np.testing.assert_array_equal(bgr, ref[::-1])


def test_bundle_prepare_gives_what_the_pipeline_normalized(tmp_path):
    root = photo_tree(tmp_path / "photos")
    ds = resolve_data(str(root), preprocess=PreprocessConfig(preset="tf"), cache_dir=tmp_path / "c")
    pre = {**ds.meta["preprocessing"], "mean": list(ds.mean), "std": list(ds.std)}
    from PIL import Image
    f = sorted((root / "test").glob("*/*"))[0]
    frame = np.asarray(Image.open(f).convert("RGB"))
    np.testing.assert_allclose(preprocess.prepare(frame, pre), ds.normalize(ds.x_test[:1]), atol=1e-6)
    np.testing.assert_allclose(preprocess.prepare(np.ascontiguousarray(frame[..., ::-1]), pre, bgr=True),
                               ds.normalize(ds.x_test[:1]), atol=1e-6)
    x = np.asarray(ds.normalize(ds.x_test[:1]))
    assert x.min() >= -1 and x.max() <= 1 and x.min() < -0.5 < 0.5 < x.max()


def test_second_run_reuses_the_decoded_arrays(tmp_path):
    root = photo_tree(tmp_path / "photos")
    cache = tmp_path / "c"
    cfg = PreprocessConfig(preset="imagenet")
    first = resolve_data(str(root), preprocess=cfg, cache_dir=cache)
    npy = next(cache.glob("*/x_train.npy"))
    stamp = npy.stat().st_mtime_ns
    again = resolve_data(str(root), preprocess=cfg, cache_dir=cache)
    assert npy.stat().st_mtime_ns == stamp and again.fingerprint() == first.fingerprint()
    other = resolve_data(str(root), preprocess=PreprocessConfig(preset="imagenet", color="bgr"), cache_dir=cache)
    assert other.fingerprint() != first.fingerprint() and len(list(cache.glob("*/x_train.npy"))) == 2


def test_class_map_gives_the_models_class_order(tmp_path):
    root = photo_tree(tmp_path / "photos", folders=("n0300", "n0100"))
    cmap = tmp_path / "synsets.txt"
    cmap.write_text("n0000\nn0100\nn0200\nn0300\n")
    ds = resolve_data(str(root), preprocess=PreprocessConfig(crop=[64], class_map=str(cmap)), cache_dir=tmp_path / "c")
    assert ds.num_classes == 4 and ds.classes[1] == "n0100" and ds.classes[3] == "n0300"
    assert sorted(set(ds.y_train.tolist())) == [1, 3]
    assert ds.input_shape == (3, 64, 64)
    jmap = tmp_path / "map.json"
    jmap.write_text('{"n0300": 0, "n0100": 1}')
    ds = resolve_data(str(root), preprocess=PreprocessConfig(crop=[64], class_map=str(jmap)))
    assert ds.classes == ["n0300", "n0100"] and ds.y_train[-1] == 0
    cmap.write_text("n0000\nn0100\n")
    with pytest.raises(UserError, match="n0300"):
        resolve_data(str(root), preprocess=PreprocessConfig(crop=[64], class_map=str(cmap)))


def test_photos_of_several_sizes_without_a_crop_are_one_error(tmp_path):
    root = photo_tree(tmp_path / "photos")
    with pytest.raises(UserError, match=r"\[3, 480, 320\] but .*\[3, 300, 600\]") as e:
        resolve_data(str(root))
    assert "preprocess.preset" in e.value.line()


def test_npy_folder_is_memory_mapped(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "arrays"
    d.mkdir()
    np.save(d / "x_train.npy", rng.integers(0, 255, (10, 3, 8, 8), dtype=np.uint8))
    np.save(d / "y_train.npy", np.arange(10) % 2)
    np.save(d / "x_test.npy", rng.integers(0, 255, (4, 3, 8, 8), dtype=np.uint8))
    np.save(d / "y_test.npy", np.arange(4) % 2)
    ds = resolve_data(str(d), preprocess=PreprocessConfig(preset="imagenet"))
    assert not ds.x_train["input"].flags.owndata and ds.num_classes == 2
    assert ds.mean == tuple(preprocess.PRESETS["imagenet"]["mean"])
    with pytest.raises(UserError, match="image folders"):
        resolve_data(str(d), preprocess=PreprocessConfig(resize=256))


def test_preprocess_settings_are_typed():
    assert build_run_config(None, {}, ["preprocess.preset=imagenet"]).preprocess.preset == "imagenet"
    for bad in ("preprocess.preset=caffe", "preprocess.presett=imagenet", "preprocess.crop=[0]"):
        with pytest.raises(UserError, match="preprocess"):
            build_run_config(None, {}, [bad])
