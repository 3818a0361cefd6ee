"""Detector outputs -> boxes: decode + NMS in plain numpy. Shipped in every detection bundle; the pipeline
scores every artifact through this same code.

Layouts (what exporters write):
- "xywh-scores": (N, 4 + C, A), box cx, cy, w, h in input pixels then per-class scores (YOLOv8 / YOLO11);
- "anchors-last": (N, A, 4 + C), the same values anchor-major (a transposed YOLOv8 export);
- "xywh-obj-scores": (N, A, 5 + C), cx, cy, w, h, objectness, then per-class scores (YOLOv5): the score
  of a class is objectness * class score.

`detect(outputs, layout, score_threshold, iou_threshold, max_detections)` returns, per image, an array
(K, 6): x1, y1, x2, y2, score, class, sorted by score. NMS is per class (boxes of different classes
never suppress each other), greedy, at IoU > iou_threshold, as torchvision's batched_nms.
"""
from __future__ import annotations

import numpy as np

LAYOUTS = ("xywh-scores", "anchors-last", "xywh-obj-scores")


def split(outputs: np.ndarray, layout: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, A, 4) cx, cy, w, h boxes and (N, A, C) class scores of a batch of raw outputs."""
    o = np.asarray(outputs, dtype=np.float32)
    if o.ndim != 3:
        raise ValueError(f"detector outputs must be 3-D (N, ., .), got shape {list(o.shape)}")
    if layout == "xywh-scores":
        o = o.transpose(0, 2, 1)
    elif layout not in ("anchors-last", "xywh-obj-scores"):
        raise ValueError(f"unknown output layout '{layout}' (one of {', '.join(LAYOUTS)})")
    if layout == "xywh-obj-scores":
        return o[..., :4], o[..., 4:5] * o[..., 5:]
    return o[..., :4], o[..., 4:]


def to_xyxy(b: np.ndarray) -> np.ndarray:
    return np.concatenate([b[..., :2] - b[..., 2:4] / 2, b[..., :2] + b[..., 2:4] / 2], -1)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) IoU of xyxy boxes."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:4], b[None, :, 2:4])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: np.clip(x[:, 2:4] - x[:, :2], 0, None).prod(-1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None] - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float,
        max_keep: int = 1 << 30) -> np.ndarray:
    """Indices kept by greedy per-class NMS, highest score first (class offset trick of batched_nms)."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    offset = classes[:, None].astype(np.float32) * (float(boxes.max()) + 1.0)
    b = boxes + offset
    order = np.argsort(-scores, kind="stable")
    keep = []
    while len(order) and len(keep) < max_keep:
        i = order[0]
        keep.append(i)
        if len(order) == 1:
            break
        rest = order[1:]
        order = rest[iou_matrix(b[i:i + 1], b[rest])[0] <= iou_threshold]
    return np.asarray(keep, np.int64)


def detect(outputs: np.ndarray, layout: str = "xywh-scores", score_threshold: float = 0.001,
           iou_threshold: float = 0.6, max_detections: int = 100, max_candidates: int = 1000,
           multi_label: bool = True) -> list[np.ndarray]:
    """Per image (K, 6) detections x1, y1, x2, y2, score, class after decode + NMS. `multi_label`: a box
    for every class above the threshold (COCO evaluation practice); False: only each anchor's best class
    (what an application shows)."""
    boxes, scores = split(outputs, layout)
    out = []
    for b, s in zip(to_xyxy(boxes), scores):
        if multi_label:
            a_idx, c_idx = np.nonzero(s > score_threshold)
        else:
            best = s.argmax(1)
            a_idx = np.nonzero(s[np.arange(len(s)), best] > score_threshold)[0]
            c_idx = best[a_idx]
        sc = s[a_idx, c_idx]
        if len(sc) > max_candidates:
            top = np.argsort(-sc, kind="stable")[:max_candidates]
            a_idx, c_idx, sc = a_idx[top], c_idx[top], sc[top]
        keep = nms(b[a_idx], sc, c_idx, iou_threshold, max_detections)
        out.append(np.concatenate([b[a_idx[keep]], sc[keep, None], c_idx[keep, None].astype(np.float32)], 1)
                   if len(keep) else np.zeros((0, 6), np.float32))
    return out


def letterbox(image: np.ndarray, size: tuple[int, int], pad_value: int = 114) -> tuple[np.ndarray, dict]:
    """An (H, W[, C]) uint8 image resized to fit `size` (h, w) keeping its aspect, padded evenly with
    `pad_value`. Returns the image and {scale, pad_x, pad_y} to map boxes back: x = (x' - pad_x) / scale."""
    from PIL import Image

    h, w = image.shape[:2]
    th, tw = size
    scale = min(th / h, tw / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
    out = np.full((th, tw, *image.shape[2:]), pad_value, dtype=np.uint8)
    py, px = (th - nh) // 2, (tw - nw) // 2
    out[py:py + nh, px:px + nw] = resized
    return out, {"scale": scale, "pad_x": px, "pad_y": py}
