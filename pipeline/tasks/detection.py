"""detection: boxes and classes. Outputs in an exported layout (pipeline/bundle/postprocess.py: (N, 4+C, A)
as YOLOv8/YOLO11, (N, A, 4+C), (N, A, 5+C) as YOLOv5), targets (N, M, 5) rows [class, x1, y1, x2, y2] in
input pixels with class -1 padding. Metrics: COCO mAP@0.5:0.95 (primary) and mAP@0.5 by pycocotools
after the shipped decode + NMS with the thresholds of the `detection` config section.

Agreement (INT8 fallback, golden samples) is the mAP@0.5:0.95 of a model's detections scored against
the reference model's confident detections (score >= detection.conf_threshold) as ground truth.
Distillation: the student's outputs against the teacher's (class probabilities at temperature T, boxes
weighted by the teacher's confidence; pipeline/tasks/detection_loss.py) plus the ground-truth loss.
"""
from __future__ import annotations

import numpy as np

from pipeline.bundle import postprocess
from pipeline.errors import UserError
from pipeline.tasks import coco
from pipeline.tasks.base import Metric, Task

FIX_LAYOUT = "name it with --set detection.output_layout=xywh-scores|anchors-last|xywh-obj-scores"


class Detection(Task):
    name = "detection"
    metrics = (Metric("map", True, "fraction"), Metric("map50", True, "fraction"))
    batch_metric = False       # COCO evaluation per training batch would cost more than the step
    head_layers = True         # every level's class and box convs keep their output rows when pruning

    def __init__(self):
        from pipeline.config import DetectionConfig
        self.cfg = DetectionConfig()
        self.num_classes: int | None = None
        self.layout: str | None = None

    def configure(self, config) -> None:
        self.cfg = config.detection

    def cache_key(self) -> dict:
        return self.cfg.cache_key()

    # ---------------------------------------------------------------- targets and outputs
    def read_targets(self, y: np.ndarray, split: str, where: str) -> np.ndarray:
        y = np.asarray(y)
        if y.ndim != 3 or y.shape[-1] != 5 or y.dtype.kind not in "fiu":
            raise UserError(f"{where}: y_{split} has shape {list(y.shape)} ({y.dtype}); detection wants (N, M, 5) rows "
                            "[class, x1, y1, x2, y2] in input pixels, class -1 for padding",
                            "store boxes that way (or load a YOLO or COCO dataset folder), or pass the --task that "
                            "fits these targets")
        y = y.astype(np.float32)
        valid = y[..., 0] >= 0
        if not np.isfinite(y).all():
            raise UserError(f"{where}: y_{split} holds NaN or infinite values", "fix or drop those boxes")
        b = y[valid]
        if len(b) and ((b[:, 3] <= b[:, 1]) | (b[:, 4] <= b[:, 2])).any():
            bad = int(((b[:, 3] <= b[:, 1]) | (b[:, 4] <= b[:, 2])).sum())
            raise UserError(f"{where}: {bad} boxes of y_{split} have x2 <= x1 or y2 <= y1",
                            "store corners x1, y1, x2, y2 (not x, y, w, h)")
        if len(b) and (b[:, 0] != np.round(b[:, 0])).any():
            raise UserError(f"{where}: y_{split} class column holds non-integers", "the first column is the class index")
        return y

    def check_outputs(self, outputs: np.ndarray, ds) -> None:
        shape = list(outputs.shape)
        c = ds.num_classes
        if outputs.ndim != 3:
            raise UserError(f"the model returns shape {shape}; detection wants (N, 4 + classes, anchors), "
                            "(N, anchors, 4 + classes) or (N, anchors, 5 + classes)",
                            "return the exported layout (as YOLOv8 or YOLOv5 export it), or write a task plug-in "
                            "(--task FILE.py:NAME) that decodes your outputs")
        self.read_targets(ds.y_test, "test", ds.name)      # bundled and folder data are not read through an .npz
        self.num_classes = c
        self.layout = self.detect_layout(shape[1:], c)

    def detect_layout(self, dims: list[int], classes: int) -> str:
        """The output layout from (dim1, dim2) and the class count; refused when ambiguous or unfit."""
        fits = {"xywh-scores": dims[0] == 4 + classes, "anchors-last": dims[1] == 4 + classes,
                "xywh-obj-scores": dims[1] == 5 + classes}
        named = self.cfg.output_layout
        if named != "auto":
            if not fits[named]:
                raise UserError(f"detection.output_layout={named} does not fit outputs {dims} with {classes} classes",
                                FIX_LAYOUT)
            return named
        found = [k for k, ok in fits.items() if ok]
        if len(found) == 1:
            return found[0]
        if not found:
            raise UserError(f"detector outputs (N, {dims[0]}, {dims[1]}) fit no known layout with {classes} classes "
                            f"(4 + {classes} = {4 + classes} box + score rows, or 5 + {classes} with objectness)",
                            "check the class count of the data and model, or decode your layout in a task plug-in "
                            "(--task FILE.py:NAME)")
        raise UserError(f"detector outputs (N, {dims[0]}, {dims[1]}) fit several layouts ({', '.join(found)})", FIX_LAYOUT)

    def _layout(self, outputs: np.ndarray) -> str:
        if self.layout is None or self.num_classes is None:
            c = self.num_classes or self._classes_from(outputs)
            self.num_classes, self.layout = c, self.detect_layout(list(outputs.shape[1:]), c)
        return self.layout

    def _classes_from(self, outputs: np.ndarray) -> int:
        if self.cfg.output_layout == "xywh-obj-scores":
            return outputs.shape[2] - 5
        if self.cfg.output_layout == "anchors-last":
            return outputs.shape[2] - 4
        return outputs.shape[1] - 4     # the YOLOv8 layout, channel-first: anchors are the long axis

    def set_classes(self, n: int) -> None:
        self.num_classes = n

    # ---------------------------------------------------------------- metrics
    def detections(self, outputs: np.ndarray, conf: float | None = None) -> list[np.ndarray]:
        c = self.cfg
        # conf given: deployment detections (best class per anchor); else COCO evaluation's multi-label boxes
        return postprocess.detect(outputs, self._layout(outputs), conf if conf is not None else c.score_threshold,
                                  c.iou_threshold, c.max_detections, multi_label=conf is None)

    def coco(self, outputs: np.ndarray, y: np.ndarray) -> dict:
        return coco.evaluate(self.detections(outputs), y, self.num_classes)

    def evaluate(self, outputs: np.ndarray, y: np.ndarray) -> dict[str, float]:
        m = self.coco(outputs, y)
        return {"map": m["map"], "map50": m["map50"]}

    def per_class(self, outputs: np.ndarray, y: np.ndarray) -> list[float]:
        return self.coco(outputs, y)["per_class_ap"]

    EXAMPLES = 4   # test images whose detections the report draws

    def details(self, outputs: np.ndarray, y: np.ndarray) -> dict:
        m = self.coco(outputs, y)
        dets = self.detections(outputs[: self.EXAMPLES], self.cfg.conf_threshold)
        return {"per_class_ap": m["per_class_ap"],
                "examples": [[[round(float(v), 2) for v in row] for row in d] for d in dets]}

    def pipeline_latency(self, run, raw, normalize, warmup: int, runs: int, threads: int) -> dict:
        """Letterbox + normalize, inference, decode + NMS (at conf_threshold) and the three in a row, each
        timed alone (p50 ms) on one stored test image."""
        from pipeline.latency import measure
        from pipeline.data.inputs import Inputs
        name = raw.names[0]
        hwc = np.asarray(raw[name])[0].transpose(1, 2, 0)          # the stored (C, H, W) uint8 image
        size = hwc.shape[:2]

        def pre():
            lb, _ = postprocess.letterbox(hwc[..., 0] if hwc.shape[-1] == 1 else hwc, size)
            lb = lb[..., None] if lb.ndim == 2 else lb
            return normalize(Inputs({name: lb.transpose(2, 0, 1)[None]}, raw.positional))

        x = pre()
        out = run(x)

        def post():
            return self.detections(out, self.cfg.conf_threshold)

        def e2e():
            return self.detections(run(pre()), self.cfg.conf_threshold)

        timed = {k: measure(f, warmup=warmup, runs=runs, threads=threads)["p50_ms"]
                 for k, f in (("preprocess", pre), ("inference", lambda: run(x)), ("postprocess", post),
                              ("end_to_end", e2e))}
        return {**{f"{k}_p50_ms": v for k, v in timed.items()},
                "postprocess": f"decode + per-class NMS (IoU {self.cfg.iou_threshold}, score >= "
                               f"{self.cfg.conf_threshold}, pipeline/bundle/postprocess.py)",
                "preprocess": "letterbox (PIL bilinear) + normalize (pipeline/bundle/preprocess.py)"}

    def manifest_section(self, ds) -> dict:
        c = self.cfg
        size = list(ds.input_shape[-2:])
        return {"output_layout": self.layout or c.output_layout, "strides": list(c.strides), "classes": list(ds.classes),
                "box_format": "x1, y1, x2, y2 in model-input pixels (undo the letterbox: x = (x' - pad_x) / scale)",
                "letterbox": ds.meta.get("letterbox", {"size": size, "pad_value": 114, "resize": "PIL bilinear, aspect "
                                                       "kept, centred (postprocess.letterbox)"}),
                "normalization": {"scale": 1 / 255, "mean": list(ds.mean), "std": list(ds.std)},
                "score_threshold_map": c.score_threshold, "conf_threshold": c.conf_threshold,
                "iou_threshold": c.iou_threshold, "max_detections": c.max_detections,
                "nms": "per class, greedy (postprocess.nms)", "postprocess": "postprocess.py"}

    def golden_extra(self, outputs: np.ndarray) -> dict:
        dets = self.detections(outputs, self.cfg.conf_threshold)
        k = max([len(d) for d in dets] + [1])
        boxes = np.full((len(dets), k, 6), -1.0, np.float32)
        for i, d in enumerate(dets):
            boxes[i, :len(d)] = d
        return {"boxes": boxes}

    def pseudo_labels(self, reference: np.ndarray) -> np.ndarray:
        """The reference model's confident detections as (N, M, 5) targets."""
        dets = self.detections(reference, self.cfg.conf_threshold)
        m = max([len(d) for d in dets] + [1])
        y = np.full((len(dets), m, 5), -1.0, np.float32)
        for i, d in enumerate(dets):
            if len(d):
                y[i, :len(d)] = np.concatenate([d[:, 5:6], d[:, :4]], 1)
        return y

    def agreement(self, outputs: np.ndarray, reference: np.ndarray) -> float:
        ref = self.pseudo_labels(reference)
        if not (ref[..., 0] >= 0).any():
            return float("nan")
        return float(self.coco(outputs, ref)["map"])

    def in_graph_nms(self, num_classes: int) -> dict | None:
        c = self.cfg
        return ({"layout": self.layout or c.output_layout, "classes": num_classes, "conf": c.conf_threshold,
                 "iou": c.iou_threshold, "max_det": c.max_detections} if c.trt_nms else None)

    def fallback_first(self, output_layers: list[str]) -> list[str]:
        """The decode (every op after the head's last convs) first, then the head's output convs: what
        keeps INT8 detectors from collapsing (a pixel-box + score concat on one INT8 scale rounds the
        scores away; the box-distribution logits lose their ranking)."""
        from pipeline.compress.output_tail import OUTPUT_TAIL
        return [OUTPUT_TAIL, *output_layers]

    # ---------------------------------------------------------------- distillation
    def strides_for(self, anchors: int, height: int | None = None, width: int | None = None):
        """Anchor points and strides for `anchors` columns: the configured strides over a square input whose
        side makes the anchor count match (or the given height/width)."""
        from pipeline.tasks.detection_loss import anchor_points
        strides = self.cfg.strides
        sides = [height] if height else range(8, 4097)
        for side in sides:
            w = width or side
            if sum(-(-side // s) * -(-w // s) for s in strides) == anchors:
                return anchor_points(side, w, strides)
        raise UserError(f"{anchors} anchors do not match strides {list(strides)} on a square input",
                        "set detection.strides to the model's strides (e.g. [8, 16, 32])")

    def distill_loss(self, student, teacher, y, temperature: float, alpha: float):
        from pipeline.tasks.detection_loss import gt_loss, kd_loss
        s, t = self._channels_first(student), self._channels_first(teacher)
        points, strides = self._points(s.shape[2])
        kd = kd_loss(s, t, strides, temperature)
        if alpha >= 1 or y is None:
            return kd
        return alpha * kd + (1 - alpha) * gt_loss(s, y.float(), points)

    def _points(self, anchors: int):
        cache = self.__dict__.setdefault("_points_cache", {})
        if anchors not in cache:
            cache[anchors] = self.strides_for(anchors)
        return cache[anchors]

    def _channels_first(self, out):
        """torch outputs as (N, 4 + C, A) with per-class probabilities (objectness folded in)."""
        import torch
        layout = self._layout(out.detach().float().cpu().numpy()[:1])
        if layout == "xywh-scores":
            return out
        o = out.transpose(1, 2)
        if layout == "xywh-obj-scores":
            o = torch.cat([o[:, :4], o[:, 4:5] * o[:, 5:]], 1)
        return o
