"""The detection task: COCO metrics (faster-coco-eval checked against pycocotools), the shipped decode + NMS,
output layouts, targets, the YOLO / COCO folder loaders and the output tail kept float in INT8."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.bundle import postprocess
from pipeline.errors import UserError
from pipeline.tasks import coco
from pipeline.tasks.detection import Detection


def _gt_and_dets(n=40, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    gt = np.full((n, 4, 5), -1, np.float32)
    dets = []
    for i in range(n):
        k = int(rng.integers(1, 5))
        xy = rng.uniform(0, 60, (k, 2))
        wh = rng.uniform(8, 30, (k, 2))
        gt[i, :k] = np.concatenate([rng.integers(0, classes, (k, 1)), xy, xy + wh], 1)
        jitter = gt[i, :k, 1:] + rng.normal(0, 2.5, (k, 4))
        cls = np.where(rng.uniform(size=k) < 0.85, gt[i, :k, 0], rng.integers(0, classes, k))
        noise = np.concatenate([rng.uniform(0, 60, (2, 2)), rng.uniform(60, 90, (2, 2))], 1)
        d = np.concatenate([np.concatenate([jitter, rng.uniform(0.3, 1, (k, 1)), cls[:, None]], 1),
                            np.concatenate([noise, rng.uniform(0, 0.5, (2, 1)), rng.integers(0, classes, (2, 1))], 1)])
        dets.append(d.astype(np.float32))
    return gt, dets


def test_coco_metrics_equal_pycocotools():
    gt, dets = _gt_and_dets()
    fast, ref = coco.evaluate(dets, gt, 3), coco.evaluate(dets, gt, 3, reference=True)
    assert 0.05 < ref["map"] < 0.95
    assert fast["map"] == pytest.approx(ref["map"], abs=1e-9)
    assert fast["map50"] == pytest.approx(ref["map50"], abs=1e-9)
    np.testing.assert_allclose(fast["per_class_ap"], ref["per_class_ap"], atol=1e-9)
    perfect = [np.concatenate([g[g[:, 0] >= 0][:, 1:], np.ones((int((g[:, 0] >= 0).sum()), 1)),
                               g[g[:, 0] >= 0][:, :1]], 1) for g in gt]
    assert coco.evaluate(perfect, gt, 3)["map"] == pytest.approx(1.0)
    assert coco.evaluate([np.zeros((0, 6), np.float32)] * len(gt), gt, 3)["map"] == 0.0


def _raw(boxes_xywh, scores):
    """(1, 4 + C, A) from (A, 4) and (A, C)."""
    return np.concatenate([boxes_xywh, scores], 1).T[None].astype(np.float32)


def test_nms_per_class_and_layouts():
    boxes = np.array([[20, 20, 10, 10], [21, 20, 10, 10], [21, 20, 10, 10], [70, 70, 8, 8]], np.float32)
    scores = np.array([[0.9, 0.0], [0.8, 0.0], [0.0, 0.7], [0.05, 0.6]], np.float32)
    d = postprocess.detect(_raw(boxes, scores), "xywh-scores", 0.1, 0.5, multi_label=False)[0]
    assert [(round(float(s), 2), int(c)) for s, c in d[:, 4:6]] == [(0.9, 0), (0.7, 1), (0.6, 1)]
    np.testing.assert_allclose(d[0, :4], [15, 15, 25, 25])
    same = postprocess.detect(_raw(boxes, scores).transpose(0, 2, 1), "anchors-last", 0.1, 0.5, multi_label=False)[0]
    np.testing.assert_array_equal(d, same)
    obj = np.concatenate([boxes, np.ones((4, 1)), scores], 1)[None].astype(np.float32)
    np.testing.assert_array_equal(d, postprocess.detect(obj, "xywh-obj-scores", 0.1, 0.5, multi_label=False)[0])
    assert len(postprocess.detect(_raw(boxes, scores), "xywh-scores", 0.01, 0.5, multi_label=True)[0]) == 4


class _Data:
    def __init__(self, classes):
        self.classes, self.num_classes, self.name = [str(i) for i in range(classes)], classes, "d"
        self.y_test = np.array([[[0, 1, 1, 5, 5]]], np.float32)


def test_layout_detected_or_refused():
    t = Detection()
    t.check_outputs(np.zeros((1, 14, 189), np.float32), _Data(10))
    assert t.layout == "xywh-scores"
    t = Detection()
    t.check_outputs(np.zeros((1, 189, 15), np.float32), _Data(10))
    assert t.layout == "xywh-obj-scores"
    with pytest.raises(UserError, match="fit no known layout"):
        Detection().check_outputs(np.zeros((1, 20, 189), np.float32), _Data(10))
    with pytest.raises(UserError, match="fit several layouts"):
        Detection().check_outputs(np.zeros((1, 14, 14), np.float32), _Data(10))
    with pytest.raises(UserError, match=r"detection wants \(N, 4 \+ classes"):
        Detection().check_outputs(np.zeros((1, 10), np.float32), _Data(10))


def test_targets_checked():
    t = Detection()
    with pytest.raises(UserError, match=r"\(N, M, 5\)"):
        t.read_targets(np.zeros(5, np.int64), "train", "d.npz")
    with pytest.raises(UserError, match="x2 <= x1"):
        t.read_targets(np.array([[[0, 10, 10, 5, 20]]], np.float32), "train", "d.npz")
    assert t.read_targets(np.array([[[1, 1, 1, 5, 5], [-1, -1, -1, -1, -1]]]), "test", "d.npz").dtype == np.float32


def _images(tmp_path, n, seed):
    """n real-looking images of different sizes with one bright rectangle each; its box in pixels."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))
        img = rng.integers(0, 40, (h, w, 3)).astype(np.uint8)
        x1, y1 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
        x2, y2 = x1 + int(rng.integers(8, w // 2)), y1 + int(rng.integers(8, h // 2))
        img[y1:y2, x1:x2] = 220
        out.append((img, (x1, y1, x2, y2), i % 2))
    return out


def _check_loaded(ds, originals, size):
    assert ds.x_train.single.shape[1:] == (3, size, size)
    for (img, (x1, y1, x2, y2), c), rows in zip(originals, ds.y_train):
        s = min(size / img.shape[0], size / img.shape[1])
        px, py = (size - round(img.shape[1] * s)) // 2, (size - round(img.shape[0] * s)) // 2
        np.testing.assert_allclose(rows[0], [c, x1 * s + px, y1 * s + py, x2 * s + px, y2 * s + py], atol=1e-3)
        assert (rows[1:, 0] == -1).all()


def test_yolo_folder(tmp_path):
    from PIL import Image

    from pipeline.data import detection_dirs
    root = tmp_path / "yolo"
    originals = {}
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        originals[split] = _images(tmp_path, 3, 0 if split == "train" else 1)
        for i, (img, (x1, y1, x2, y2), c) in enumerate(originals[split]):
            Image.fromarray(img).save(root / "images" / split / f"{i}.{'jpg' if i % 2 else 'png'}", quality=95)
            h, w = img.shape[:2]
            (root / "labels" / split / f"{i}.txt").write_text(
                f"{c} {(x1 + x2) / 2 / w} {(y1 + y2) / 2 / h} {(x2 - x1) / w} {(y2 - y1) / h}\n")
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames: {0: box, 1: crate}\n")
    ds = detection_dirs.load(root, 64)
    assert ds.classes == ["box", "crate"] and ds.meta["letterbox"]["size"] == [64, 64]
    _check_loaded(ds, originals["train"], 64)
    (root / "labels" / "train" / "0.txt").write_text("0 0.5 0.5 1.5 0.2\n")
    with pytest.raises(UserError, match="outside 0..1"):
        detection_dirs.load(root, 64)


def test_coco_folder(tmp_path):
    from PIL import Image

    from pipeline.data import detection_dirs
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    originals = {}
    for split in ("train", "val"):
        (root / split).mkdir()
        originals[split] = _images(tmp_path, 3, 2 if split == "train" else 3)
        images, anns = [], []
        for i, (img, (x1, y1, x2, y2), c) in enumerate(originals[split]):
            Image.fromarray(img).save(root / split / f"{i}.png")
            images.append({"id": 10 + i, "file_name": f"{i}.png", "height": img.shape[0], "width": img.shape[1]})
            anns.append({"id": i + 1, "image_id": 10 + i, "category_id": [3, 7][c], "bbox": [x1, y1, x2 - x1, y2 - y1],
                         "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(
            {"images": images, "annotations": anns, "categories": [{"id": 3, "name": "box"}, {"id": 7, "name": "crate"}]}))
    ds = detection_dirs.load(root, 48)
    assert ds.classes == ["box", "crate"] and ds.meta["category_ids"] == [3, 7]
    _check_loaded(ds, originals["train"], 48)


def test_output_tail_of_the_bundled_detector():
    """The decode after the head's last convs is the output tail; the six head convs feed it."""
    import onnx
    import torch

    from pipeline.backends.onnxruntime import export_onnx
    from pipeline.compress.output_tail import onnx_tail, torch_output_layers
    from pipeline.models.detector import tiny_yolo
    m = tiny_yolo()
    x = torch.zeros(1, 1, 96, 96)
    heads = torch_output_layers(m, (x,))
    assert heads == [f"head.{b}.{i}.1" for b in ("box", "cls") for i in range(3)]
    from pipeline.models.resnet import small_resnet
    assert torch_output_layers(small_resnet(), (torch.zeros(1, 1, 28, 28),)) == ["fc"]
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as d:
        export_onnx(m, x, Path(d) / "m.onnx")
        tail, onnx_heads = onnx_tail(onnx.load(str(Path(d) / "m.onnx")))
    assert len(onnx_heads) == 6 and all(n.endswith("/Conv") for n in onnx_heads)
    assert tail and all("decode" in n or "Concat" in n for n in tail)


def test_tensorrt_in_graph_nms_inputs_match_the_raw_output(tmp_path):
    """The EfficientNMS_TRT copy cannot run here (no TensorRT, and ONNX Runtime has no kernel for it); what
    is checked: the plugin node and its attributes, and that the boxes / scores it is fed are the raw
    output's (the graph cut just before the plugin, run in ONNX Runtime)."""
    import onnx
    import torch

    from pipeline.backends.onnxruntime import export_onnx
    from pipeline.backends.tensorrt.nms import add_efficient_nms
    from pipeline.models.detector import tiny_yolo
    m = tiny_yolo().eval()
    x = torch.randn(2, 1, 96, 96)
    export_onnx(m, x[:1], tmp_path / "m.onnx")
    meta = add_efficient_nms(tmp_path / "m.onnx", tmp_path / "nms.onnx", "auto", 10, 0.25, 0.6, 50)
    assert meta["verified"] is False and meta["anchors"] == 189
    g = onnx.load(str(tmp_path / "nms.onnx"))
    nms = g.graph.node[-1]
    assert nms.op_type == "EfficientNMS_TRT" and list(nms.input) == ["nms_boxes", "nms_scores"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nms.attribute}
    assert attrs["box_coding"] == 1 and attrs["max_output_boxes"] == 50 and attrs["background_class"] == -1
    del g.graph.node[-1]
    g.graph.ClearField("output")
    g.graph.output.extend([onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                           for n in ("nms_boxes", "nms_scores")])
    onnx.save(g, str(tmp_path / "cut.onnx"))
    import onnxruntime
    sess = onnxruntime.InferenceSession(str(tmp_path / "cut.onnx"), providers=["CPUExecutionProvider"])
    boxes, scores = sess.run(None, {sess.get_inputs()[0].name: x[:1].numpy()})
    raw = m(x[:1]).detach().numpy().transpose(0, 2, 1)
    np.testing.assert_allclose(boxes, raw[..., :4], atol=1e-4)
    np.testing.assert_allclose(scores, raw[..., 4:], atol=1e-5)
