"""Detection datasets in the two layouts people have, letterboxed to the model's input size.

- Ultralytics / YOLO: `DIR/data.yaml` with `train:` and `val:` (or `test:`) image folders (relative to
  `path:` or DIR) and `names:` (a list, or {index: name}); labels in the sibling `labels/` folder
  (`images/<split>/a.jpg` -> `labels/<split>/a.txt`), one `class cx cy w h` row per box, normalized 0..1.
- COCO: `DIR/annotations/instances_<split>.json` (train, and val or test) with images in `DIR/<split>/`,
  `DIR/images/<split>/` or `DIR/<split>2017/`; bbox [x, y, w, h] in pixels; category ids mapped to 0..K-1
  in id order (the mapping is recorded).

Every image (JPEG/PNG/WebP/BMP, any size, grey or colour: converted to RGB) is letterboxed to
`detection.input_size` (aspect kept, centred, pad 114; pipeline/bundle/postprocess.py `letterbox`, the code
the bundle ships) and its boxes moved with it. The letterbox is recorded in the dataset's meta and in
the manifest. Targets: (N, M, 5) [class, x1, y1, x2, y2] in model-input pixels, class -1 padding.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.bundle.postprocess import letterbox
from pipeline.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
PAD = 114


def kind(root: Path) -> str | None:
    if (root / "data.yaml").is_file():
        return "yolo"
    if list((root / "annotations").glob("instances_*.json")):
        return "coco"
    return None


def _read(path: Path, size: int) -> tuple[np.ndarray, dict]:
    from PIL import Image
    try:
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"))
    except Exception as e:  # noqa: BLE001 -- any unreadable image is the same user error
        raise UserError(f"cannot read image {path}: {e.__class__.__name__}", "remove or re-save that file") from None
    out, lb = letterbox(rgb, (size, size), PAD)
    return out.transpose(2, 0, 1), lb | {"h": rgb.shape[0], "w": rgb.shape[1]}


def _pack(images: list[np.ndarray], boxes: list[np.ndarray], where: str) -> tuple[np.ndarray, np.ndarray]:
    if not images:
        raise UserError(f"{where} has no images ({', '.join(IMAGE_SUFFIXES)})", "point the split at a folder of images")
    m = max([len(b) for b in boxes] + [1])
    y = np.full((len(boxes), m, 5), -1.0, np.float32)
    for i, b in enumerate(boxes):
        y[i, :len(b)] = b
    return np.stack(images).astype(np.uint8), y


def _moved(rows: np.ndarray, lb: dict) -> np.ndarray:
    """(K, 5) class + pixel xyxy of the original image -> letterboxed model-input pixels."""
    if not len(rows):
        return rows.reshape(0, 5)
    out = rows.copy()
    out[:, [1, 3]] = rows[:, [1, 3]] * lb["scale"] + lb["pad_x"]
    out[:, [2, 4]] = rows[:, [2, 4]] * lb["scale"] + lb["pad_y"]
    return out


def load_yolo(root: Path, size: int):
    import yaml
    try:
        cfg = yaml.safe_load((root / "data.yaml").read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{root}/data.yaml is not valid YAML: {str(e).splitlines()[0]}", "fix the file") from None
    names = cfg.get("names")
    if isinstance(names, dict):
        names = [str(names[k]) for k in sorted(names, key=int)]
    if not isinstance(names, list) or not names:
        raise UserError(f"{root}/data.yaml has no class names", "add `names: [cat, dog, ...]`")
    base = (root / cfg["path"]) if cfg.get("path") else root
    test_key = "test" if cfg.get("test") else "val"
    splits = {}
    for split, key in (("train", "train"), ("test", test_key)):
        if not cfg.get(key):
            raise UserError(f"{root}/data.yaml has no `{key}:` image folder", f"add `{key}: images/{key}`")
        img_dir = base / cfg[key]
        if not img_dir.is_dir():
            raise UserError(f"{root}/data.yaml: {key} folder {img_dir} not found", "fix the path in data.yaml")
        label_dir = Path(str(img_dir).replace("/images", "/labels", 1))
        images, boxes = [], []
        for f in sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            img, lb = _read(f, size)
            rows = np.zeros((0, 5), np.float32)
            txt = label_dir / f"{f.stem}.txt"
            if txt.is_file() and txt.read_text().strip():
                try:
                    rows = np.loadtxt(txt, dtype=np.float32, ndmin=2)
                except ValueError:
                    raise UserError(f"{txt}: rows are not numbers", "write `class cx cy w h` per line, normalized") from None
                if rows.shape[1] != 5:
                    raise UserError(f"{txt}: rows have {rows.shape[1]} values (segments or keypoints?)",
                                    "write boxes as `class cx cy w h`, normalized 0..1")
                if rows[:, 1:].max() > 1.0 + 1e-6 or rows[:, 1:].min() < 0:
                    raise UserError(f"{txt}: box values outside 0..1", "YOLO labels are normalized by image size")
                if rows[:, 0].max() >= len(names):
                    raise UserError(f"{txt}: class {int(rows[:, 0].max())} but data.yaml names {len(names)}",
                                    "add the class to names or fix the label")
                w, h = lb["w"], lb["h"]
                cx, cy, bw, bh = rows[:, 1] * w, rows[:, 2] * h, rows[:, 3] * w, rows[:, 4] * h
                rows = np.stack([rows[:, 0], cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
            images.append(img)
            boxes.append(_moved(rows, lb))
        splits[split] = _pack(images, boxes, str(img_dir))
    return splits, names, {"layout": "yolo", "test_split": test_key}


def _coco_images(root: Path, split: str) -> Path:
    for d in (root / split, root / "images" / split, root / f"{split}2017"):
        if d.is_dir():
            return d
    raise UserError(f"{root}: no image folder for the COCO split '{split}'",
                    f"put its images in {root / split} (or images/{split}, {split}2017)")


def load_coco(root: Path, size: int):
    files = {p.stem[len("instances_"):]: p for p in (root / "annotations").glob("instances_*.json")}
    test = next((s for s in ("test", "val", "val2017", "test2017") if s in files), None)
    train = next((s for s in ("train", "train2017") if s in files), None)
    if not train or not test:
        raise UserError(f"{root}/annotations has {sorted(files)}; need instances_train.json and instances_val.json",
                        "name the files instances_train.json and instances_val.json (or _test)")
    cats, splits = None, {}
    for split, name in (("train", train), ("test", test)):
        try:
            data = json.loads(files[name].read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"cannot read {files[name]}: {e.__class__.__name__}", "pass a COCO instances file") from None
        ids = sorted(c["id"] for c in data.get("categories", []))
        if cats is None:
            cats = {c["id"]: c["name"] for c in data.get("categories", [])}
            index = {cid: i for i, cid in enumerate(ids)}
        per_image: dict[int, list] = {}
        for a in data.get("annotations", []):
            if a.get("iscrowd"):
                continue
            if a["category_id"] not in index:
                raise UserError(f"{files[name]}: category {a['category_id']} is not in the train categories",
                                "use the same categories in every split")
            x, y, w, h = a["bbox"]
            per_image.setdefault(a["image_id"], []).append([index[a["category_id"]], x, y, x + w, y + h])
        folder = _coco_images(root, name.replace("2017", "") if not (root / name).is_dir() else name)
        images, boxes = [], []
        for im in sorted(data.get("images", []), key=lambda i: i["id"]):
            img, lb = _read(folder / im["file_name"], size)
            images.append(img)
            boxes.append(_moved(np.asarray(per_image.get(im["id"], []), np.float32).reshape(-1, 5), lb))
        splits[split] = _pack(images, boxes, str(folder))
    names = [cats[i] for i in sorted(cats)]
    return splits, names, {"layout": "coco", "category_ids": sorted(cats), "test_split": test}


def load(root: Path, size: int):
    """The Dataset of a YOLO or COCO folder, letterboxed to size x size."""
    from pipeline.data import Dataset
    splits, names, info = (load_yolo if kind(root) == "yolo" else load_coco)(root, size)
    meta = {**info, "letterbox": {"size": [size, size], "pad_value": PAD,
                                  "resize": "PIL bilinear, aspect kept, centred (postprocess.letterbox)"}}
    return Dataset(root.name, *splits["train"], *splits["test"], names, (0.0,) * 3, (1.0,) * 3, source=str(root),
                   meta=meta)
