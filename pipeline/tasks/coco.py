"""COCO detection metrics by faster-coco-eval (Apache-2.0; a C++ port of pycocotools' COCOeval that gives
the same numbers, tests/tasks/test_detection.py checks it against pycocotools), never by hand.

`evaluate(dets, gt, num_classes)`: `dets` per image (K, 6) x1, y1, x2, y2, score, class (from
pipeline/bundle/postprocess.py), `gt` (N, M, 5) [class, x1, y1, x2, y2] with class -1 padding. Returns
mAP@0.5:0.95, mAP@0.5 and the per-class AP@0.5:0.95 (NaN for a class with no ground truth).
"""
from __future__ import annotations

import contextlib
import io

import numpy as np


def _apis(reference: bool):
    if reference:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    else:
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as COCOeval
    return COCO, COCOeval


def _coco_gt(gt: np.ndarray, num_classes: int, COCO):

    images, anns = [], []
    for i, rows in enumerate(gt):
        images.append({"id": i + 1})
        for r in rows[rows[:, 0] >= 0]:
            w, h = float(r[3] - r[1]), float(r[4] - r[2])
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(r[0]) + 1,
                         "bbox": [float(r[1]), float(r[2]), w, h], "area": w * h, "iscrowd": 0})
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns,
                    "categories": [{"id": c + 1, "name": str(c)} for c in range(num_classes)]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def evaluate(dets: list[np.ndarray], gt: np.ndarray, num_classes: int, reference: bool = False) -> dict:
    """`reference=True` scores with pycocotools itself (slower; for cross-checks)."""
    COCO, COCOeval = _apis(reference)
    if len(dets) != len(gt):
        raise ValueError(f"{len(dets)} detection lists for {len(gt)} images")
    coco_gt = _coco_gt(np.asarray(gt, np.float32), num_classes, COCO)
    results = [{"image_id": i + 1, "category_id": int(d[5]) + 1,
                "bbox": [float(d[0]), float(d[1]), float(d[2] - d[0]), float(d[3] - d[1])], "score": float(d[4])}
               for i, image in enumerate(dets) for d in image]
    if not results:   # nothing detected: every AP is 0 (pycocotools refuses an empty result list)
        return {"map": 0.0, "map50": 0.0, "per_class_ap": [0.0] * num_classes, "detections": 0}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"]          # (iou thresholds, recall, classes, areas, max dets)
    per_class = []
    for c in range(num_classes):
        p = precision[:, :, c, 0, -1]
        per_class.append(float(np.mean(p[p > -1])) if (p > -1).any() else float("nan"))
    return {"map": float(ev.stats[0]), "map50": float(ev.stats[1]), "per_class_ap": per_class,
            "detections": len(results)}
