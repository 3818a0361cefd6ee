"""In-graph NMS for a TensorRT detector: a copy of the QDQ ONNX ending in TensorRT's EfficientNMS_TRT plugin.

Opt-in (`detection.trt_nms = true`). The plugin takes boxes (N, A, 4) and scores (N, A, C); with
box_coding 1 the boxes are cx, cy, w, h, which is what the exported layouts carry. Its outputs replace the
raw tensor: num_detections (N, 1) int32, detection_boxes (N, K, 4) x1 y1 x2 y2, detection_scores (N, K),
detection_classes (N, K) int32. NOT VERIFIED HERE: no TensorRT on the build host, and ONNX Runtime has no
kernel for the plugin, so nothing in this repository runs the file; the bundle's golden check and mAP are
for the graph without it (postprocess.py does the same NMS in numpy). The plugin keeps one class per box
(as postprocess.detect with multi_label=False) but breaks score ties and caps candidates its own way.
"""
from __future__ import annotations

from pathlib import Path

NMS_FILE = "model.int8.qdq.nms.onnx"


def add_efficient_nms(src: Path, dest: Path, layout: str, classes: int, conf: float, iou: float, max_det: int) -> dict:
    import numpy as np
    import onnx
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(onnx.load(str(src)))
    out = graph.outputs[0]
    n, d1, d2 = out.shape
    if layout == "auto":   # as pipeline/tasks/detection.py detects it (that check ran at load)
        layout = "xywh-scores" if d1 == 4 + classes else "anchors-last" if d2 == 4 + classes else "xywh-obj-scores"
    if layout == "xywh-scores":
        t = gs.Variable("nms_in", dtype=np.float32)
        graph.layer(op="Transpose", inputs=[out], outputs=[t], attrs={"perm": [0, 2, 1]})
        rows, classes = d2, d1 - 4
    else:
        t, rows, classes = out, d1, d2 - 4 - (layout == "xywh-obj-scores")

    def cut(name: str, lo: int, hi: int):
        v = gs.Variable(name, dtype=np.float32)
        graph.layer(op="Slice", inputs=[t, gs.Constant(f"{name}_lo", np.array([lo], np.int64)),
                                         gs.Constant(f"{name}_hi", np.array([hi], np.int64)),
                                         gs.Constant(f"{name}_ax", np.array([2], np.int64))], outputs=[v])
        return v

    boxes = cut("nms_boxes", 0, 4)
    if layout == "xywh-obj-scores":
        obj, cls = cut("nms_obj", 4, 5), cut("nms_cls", 5, 5 + classes)
        scores = gs.Variable("nms_scores", dtype=np.float32)
        graph.layer(op="Mul", inputs=[obj, cls], outputs=[scores])
    else:
        scores = cut("nms_scores", 4, 4 + classes)
    outs = [gs.Variable("num_detections", dtype=np.int32, shape=[n, 1]),
            gs.Variable("detection_boxes", dtype=np.float32, shape=[n, max_det, 4]),
            gs.Variable("detection_scores", dtype=np.float32, shape=[n, max_det]),
            gs.Variable("detection_classes", dtype=np.int32, shape=[n, max_det])]
    attrs = {"plugin_version": "1", "background_class": -1, "max_output_boxes": max_det,
             "score_threshold": float(conf), "iou_threshold": float(iou), "score_activation": 0, "box_coding": 1}
    graph.layer(op="EfficientNMS_TRT", name="efficient_nms", inputs=[boxes, scores], outputs=outs, attrs=attrs)
    graph.outputs = outs
    graph.cleanup().toposort()
    onnx.save(gs.export_onnx(graph), str(dest))
    return {"file": dest.name, "plugin": "EfficientNMS_TRT", "attrs": attrs, "anchors": rows, "classes": classes,
            "verified": False, "why_not": "no TensorRT on the build host; ONNX Runtime has no kernel for the plugin"}
