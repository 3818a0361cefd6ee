"""`fashion-detect`: the bundled detection dataset, composed from real Fashion-MNIST items.

Each image is a 96x96 grey canvas (faint noise texture) holding 1 to MAX_OBJECTS real Fashion-MNIST
items (Debian's `dataset-fashion-mnist`), each cut to its tight bounding box, resized so its longer
side is 14..46 px and pasted where it overlaps no earlier item by more than IoU 0.2. The box of an
item is the tight box of its non-zero pixels after the paste; its class is the Fashion-MNIST label.
Train images use items of the Fashion-MNIST train split only, test images items of its test split.

Generated deterministically (seeded numpy, PIL resize) in memory, a few seconds; nothing is written.
Targets: float32 (N, MAX_OBJECTS, 5) rows [class, x1, y1, x2, y2] in input pixels, class -1 pads.
"""
from __future__ import annotations

import numpy as np

SIZE = 96
MAX_OBJECTS = 4
TRAIN_IMAGES, TEST_IMAGES = 8000, 1000
SEED = 20261202
MIN_SIDE, MAX_SIDE = 14, 46


def _tight(item: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(item > 20)
    return item[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1]


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def compose(items: np.ndarray, labels: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` canvases (N, 1, SIZE, SIZE) uint8 and their boxes (N, MAX_OBJECTS, 5) from 28x28 `items`."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = np.zeros((n, 1, SIZE, SIZE), np.uint8)
    boxes = np.full((n, MAX_OBJECTS, 5), -1.0, np.float32)
    for i in range(n):
        canvas = rng.integers(0, 24, (SIZE, SIZE)).astype(np.uint8)
        placed: list[tuple[float, float, float, float]] = []
        for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
            k = int(rng.integers(len(items)))
            crop = _tight(items[k])
            side = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
            scale = side / max(crop.shape)
            h, w = max(2, round(crop.shape[0] * scale)), max(2, round(crop.shape[1] * scale))
            patch = np.asarray(Image.fromarray(crop).resize((w, h), Image.BILINEAR))
            for _try in range(20):
                x0, y0 = int(rng.integers(0, SIZE - w + 1)), int(rng.integers(0, SIZE - h + 1))
                ys, xs = np.nonzero(patch > 20)
                if len(ys) == 0:
                    break
                box = (float(x0 + xs.min()), float(y0 + ys.min()), float(x0 + xs.max() + 1), float(y0 + ys.max() + 1))
                if all(_iou(box, p) <= 0.2 for p in placed):
                    region = canvas[y0:y0 + h, x0:x0 + w]
                    np.maximum(region, patch, out=region)
                    boxes[i, len(placed)] = (labels[k], *box)
                    placed.append(box)
                    break
        images[i, 0] = canvas
    return images, boxes


def dataset():
    """The `fashion-detect` Dataset (classes: the Fashion-MNIST names)."""
    from pipeline.data import FASHION_MNIST_CLASSES, Dataset, load_fashion_mnist

    fm = load_fashion_mnist()
    x_tr, y_tr = compose(fm.x_train.single[:, 0], fm.y_train, TRAIN_IMAGES, SEED)
    x_te, y_te = compose(fm.x_test.single[:, 0], fm.y_test, TEST_IMAGES, SEED + 1)
    mean, std = float(x_tr.mean() / 255), float(x_tr.std() / 255)
    return Dataset("fashion-detect", x_tr, y_tr, x_te, y_te, list(FASHION_MNIST_CLASSES), (round(mean, 4),),
                   (round(std, 4),), source="fashion-detect",
                   meta={"generator": "pipeline/data/fashion_detect.py", "seed": SEED, "size": SIZE,
                         "images": {"train": TRAIN_IMAGES, "test": TEST_IMAGES}, "max_objects": MAX_OBJECTS,
                         "items_from": "Debian dataset-fashion-mnist (train items -> train, test items -> test)"})
