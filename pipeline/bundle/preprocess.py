"""The model's input preprocessing as code: numpy (and Pillow to decode files at real size). Shipped verbatim in every hand-off bundle, and the
very function the pipeline normalizes with (pipeline.data.normalize is `normalize_image`), so a device
that preprocesses with this file feeds the model what it was trained, calibrated and evaluated on.

    from preprocess import load_manifest_preprocessing, prepare
    pre = load_manifest_preprocessing("manifest.json")
    x = prepare(frame_hwc_uint8, pre)        # a camera frame (H, W, C) or (H, W), any size -> (1, C, h, w)

Steps, in order (each one says what the training data had, from manifest.json's "preprocessing"):
1. colour order: the model takes `channels` channels ("gray" or "rgb"); a BGR frame (OpenCV) is
   flipped with `bgr=True`, a colour frame for a grayscale model is converted with ITU-R BT.601 luma.
2. resize the short side to the model's input size, keeping the aspect ratio (bilinear), then
3. centre crop to exactly (h, w). Training data already had the model's size: steps 2-3 are for frames.
4. scale (uint8 / 255 for uint8 images; floats as stored) and normalize (x - mean) / std per channel,
   float32, NCHW.
Integer inputs (token ids, masks) are never normalized; other float inputs are passed as stored.

Real-size photos (an image folder read with a preset or resize/crop, manifest "preprocessing" with
"resize" / "crop" / "color"): `load_image(path_or_frame, pre)` decodes with Pillow, converts to RGB
(or L), resizes the shorter side to `resize` (bilinear, Pillow's antialiasing filter), centre-crops
`crop` = (h, w), flips to BGR when `color` is "bgr", and returns CHW uint8: exactly what the pipeline
stored, calibrated and evaluated on (it decodes folders with this function). `prepare` then uses it for
such manifests. Presets (PRESETS): imagenet (256 / 224, RGB, ImageNet mean/std), tf and inception
(256 / 224, RGB, x / 127.5 - 1, i.e. mean 0.5 std 0.5 on the 0..1 scale).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# Presets of preprocessing for photos: what the model was trained with (torchvision / TF conventions).
PRESETS = {
    "imagenet": {"resize": 256, "crop": [224, 224], "color": "rgb",
                 "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    "tf": {"resize": 256, "crop": [224, 224], "color": "rgb", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
    "inception": {"resize": 256, "crop": [224, 224], "color": "rgb", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
}
COLORS = ("rgb", "bgr", "gray")


def normalize_image(x: np.ndarray, mean, std) -> np.ndarray:
    """(N, C, H, W) images -> float32 model input: uint8 scaled to 0..1, then (x - mean) / std per channel."""
    x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    c = x.shape[1]
    m = np.asarray(mean, np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std, np.float32).reshape(1, -1, 1, 1)
    if m.shape[1] not in (1, c) or s.shape[1] not in (1, c):
        raise ValueError(f"mean/std have {m.shape[1]}/{s.shape[1]} values but the images have {c} channels: "
                         "give one value per channel (or one for all)")
    return (x - m) / s


def normalize_inputs(arrays: dict, kinds: dict, mean, std) -> dict:
    """Stored inputs by name -> model inputs: images normalized, integer ids as int64, other floats float32."""
    out = {}
    for name, a in arrays.items():
        kind = kinds.get(name) or ("image" if a.ndim == 4 else "int" if a.dtype.kind in "iub" else "float")
        out[name] = (normalize_image(a, mean, std) if kind == "image" else
                     a.astype(np.int64) if kind == "int" else a.astype(np.float32))
    return out


def _resize_bilinear(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """(H, W, C) float32 -> (h, w, C), bilinear with half-pixel centres (as OpenCV's INTER_LINEAR)."""
    H, W = img.shape[:2]
    ys = np.clip((np.arange(h) + 0.5) * H / h - 0.5, 0, H - 1)
    xs = np.clip((np.arange(w) + 0.5) * W / w - 0.5, 0, W - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, H - 1), np.minimum(x0 + 1, W - 1)
    wy, wx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    top = img[y0][:, x0] * (1 - wx) + img[y0][:, x1] * wx
    bottom = img[y1][:, x0] * (1 - wx) + img[y1][:, x1] * wx
    return top * (1 - wy) + bottom * wy


def resize_crop(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """(H, W, C): short side resized to fit (h, w) keeping the aspect ratio, then centre-cropped to (h, w)."""
    H, W = img.shape[:2]
    if (H, W) == (h, w):
        return img
    k = max(h / H, w / W)
    rh, rw = max(h, round(H * k)), max(w, round(W * k))
    img = _resize_bilinear(img.astype(np.float32), rh, rw)
    top, left = (rh - h) // 2, (rw - w) // 2
    return img[top:top + h, left:left + w]


def to_channels(img: np.ndarray, channels: int, bgr: bool = False) -> np.ndarray:
    """(H, W) or (H, W, C) -> (H, W, channels): BGR flipped to RGB, colour to BT.601 luma for 1 channel."""
    img = img[..., None] if img.ndim == 2 else img
    if img.shape[2] == 4:
        img = img[..., :3]                       # drop alpha
    if bgr and img.shape[2] == 3:
        img = img[..., ::-1]
    if channels == 1 and img.shape[2] == 3:
        luma = img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        img = luma[..., None]
    elif channels == 3 and img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    if img.shape[2] != channels:
        raise ValueError(f"a {img.shape[2]}-channel frame for a {channels}-channel model")
    return img


def prepare(frame: np.ndarray, pre: dict, bgr: bool = False) -> np.ndarray:
    """One frame (H, W[, C]; uint8 0..255 or float 0..1) -> the model's (1, C, h, w) float32 input."""
    if pre.get("resize") or pre.get("crop"):    # photos decoded as load_image stored them
        if frame.dtype != np.uint8:
            frame = np.clip(np.round(frame * 255.0), 0, 255).astype(np.uint8)
        if bgr and frame.ndim == 3 and frame.shape[2] >= 3:
            frame = np.ascontiguousarray(frame[..., 2::-1])
        return normalize_image(load_image(frame, pre)[None], pre["mean"], pre["std"])
    c, h, w = pre["input_chw"]
    was_uint8 = frame.dtype == np.uint8
    img = resize_crop(to_channels(frame, c, bgr != (pre.get("color") == "bgr")), h, w)
    if was_uint8:      # back on the 0..255 scale of the stored data, rounded as an image would be
        img = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return normalize_image(np.ascontiguousarray(img.transpose(2, 0, 1))[None], pre["mean"], pre["std"])


def load_image(src, pre: dict) -> np.ndarray:
    """An image file (path) or frame ((H, W[, C]) uint8 RGB array, or a PIL image) -> (C, h, w) uint8 as the
    pipeline stored it: Pillow decode, to RGB / L, shorter side resized to pre["resize"] (None: kept),
    centre crop to pre["crop"] (None: kept), channels flipped to BGR for color "bgr"."""
    from PIL import Image
    color = pre.get("color", "rgb")
    if isinstance(src, np.ndarray):
        img = Image.fromarray(src[..., 0] if src.ndim == 3 and src.shape[2] == 1 else src)
    elif isinstance(src, Image.Image):
        img = src
    else:
        img = Image.open(src)
    with img:
        img = img.convert("L" if color == "gray" else "RGB")
        resize, crop = pre.get("resize"), pre.get("crop")
        if resize:
            w, h = img.size
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = int(resize), int(int(resize) * long / short)
            size = (new_short, new_long) if w <= h else (new_long, new_short)
            if size != img.size:
                img = img.resize(size, Image.BILINEAR)
        if crop:
            ch, cw = int(crop[0]), int(crop[1])
            w, h = img.size
            if w < cw or h < ch:     # smaller than the crop: grow it to cover, as for a frame
                k = max(cw / w, ch / h)
                img = img.resize((max(cw, round(w * k)), max(ch, round(h * k))), Image.BILINEAR)
                w, h = img.size
            top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
            img = img.crop((left, top, left + cw, top + ch))
        arr = np.asarray(img, dtype=np.uint8)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    if color == "bgr":
        arr = arr[::-1]
    return np.ascontiguousarray(arr)


def load_manifest_preprocessing(manifest: str | Path) -> dict:
    """{"input_chw", "mean", "std", ...} from a bundle's manifest.json."""
    m = json.loads(Path(manifest).read_text())
    pre = dict(m["preprocessing"])
    shape = m["input"]["shape"]
    pre.setdefault("input_chw", list(shape[1:]) if m["input"].get("layout", "NCHW") == "NCHW"
                   else [shape[3], shape[1], shape[2]])
    return pre
