"""Dynamic axes and named input shapes (pipeline/data/shapes.py): parsing, resolution against a model's
inputs, the TensorRT profile, the latency rows, and the refusals (one line each)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.backends.onnxruntime import export_onnx
from pipeline.data.inputs import Inputs, InputSpec
from pipeline.data.shapes import Dynamic, parse_dynamic, parse_input_shapes, resize_to
from pipeline.errors import UserError

sys.path.insert(0, str(Path(__file__).parents[1] / "e2e"))
import any_models as am  # noqa: E402

TOKENS = [InputSpec("input_ids", "int", "int64", (16,)), InputSpec("attention_mask", "int", "int64", (16,))]
IMAGE = [InputSpec("input", "image", "uint8", (3, 32, 32))]


def test_parse_forms():
    assert parse_dynamic(["batch=1..32", "seq=16..128,audio:2=8..64"]) == {"batch": [1, 32], "seq": [16, 128],
                                                                         "audio:2": [8, 64]}
    assert parse_input_shapes(["input_ids=1x128", "1,3,224,224"]) == {"input_ids": [1, 128], "input": [1, 3, 224, 224]}
    for bad in ("batch=32..1", "batch=0..4", "seq=16-128", "batch"):
        with pytest.raises(UserError, match="--dynamic"):
            parse_dynamic([bad])
    with pytest.raises(UserError, match="is not a shape"):
        parse_input_shapes(["input=1xfoo"])


def test_resolution_profile_and_latency_rows():
    dyn = Dynamic({"batch": [1, 8], "seq": [8, 128]}, TOKENS)
    shapes = {"input_ids": [1, 16], "attention_mask": [1, 16]}
    assert dyn.onnx_axes() == {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                               "logits": {0: "batch"}}
    assert dyn.profiles(shapes)["input_ids"] == [[1, 8], [8, 128], [8, 128]]
    rows = dyn.latency_shapes(shapes)
    # batch: its ends; seq: lo, the largest powers of two below hi, hi (at most 4 points)
    assert [label for label, _ in rows] == [f"batch={b} seq={s}" for b in (1, 8) for s in (8, 32, 64, 128)]
    assert rows[-1][1] == {"input_ids": [8, 128], "attention_mask": [8, 128]}
    assert not Dynamic({}, TOKENS) and Dynamic({}, TOKENS).latency_shapes(shapes) == []
    dyn.check_data(shapes)
    with pytest.raises(UserError, match="excludes the data's input_ids size 16"):
        Dynamic({"seq": [32, 64]}, TOKENS).check_data(shapes)


@pytest.mark.parametrize("declared, message", [
    ({"seq": [8, 64]}, "no input is a \\(N, L\\) integer sequence"),
    ({"image:2": [8, 64]}, "has no input 'image'"),
    ({"input:4": [8, 64]}, "has 4 axes"),
    ({"frames": [8, 64]}, "is not batch, seq or NAME:AXIS"),
])
def test_refusals_name_the_fix(declared, message):
    with pytest.raises(UserError, match=message) as e:
        Dynamic(declared, IMAGE)
    assert e.value.fix


def test_resize_cuts_and_repeats_real_samples():
    a = {"x": np.arange(6).reshape(2, 3)}
    out = resize_to(a, {"x": [3, 5]})["x"]
    assert out.shape == (3, 5) and out[2].tolist() == [0, 1, 2, 0, 1] and resize_to(a, {"x": [1, 2]})["x"].tolist() == [[0, 1]]


def test_dynamic_export_is_checked_at_the_declared_extremes(tmp_path):
    model = am.tiny_encoder().eval()
    ids = np.ones((1, 16), np.int64)
    example = Inputs({"input_ids": ids, "attention_mask": np.ones_like(ids)})
    meta = export_onnx(model, example, tmp_path / "m.onnx", dynamic=Dynamic({"batch": [1, 4], "seq": [4, 16]}, TOKENS))
    assert [c["shape"] for c in meta["dynamic_checked"]] == ["batch=1 seq=4", "batch=4 seq=16"]
    assert all(c["max_abs_diff_vs_torch"] < 1e-4 for c in meta["dynamic_checked"])
    # beyond its position table the model itself fails: refused in one line, naming the shape
    with pytest.raises(UserError, match="fails at seq=64"):
        export_onnx(model, example, tmp_path / "m2.onnx", dynamic=Dynamic({"seq": [4, 64]}, TOKENS))

    class FrozenLength(torch.nn.Module):      # reads a size the tracer turns into a constant
        def forward(self, input_ids, attention_mask):
            return (input_ids.float() * attention_mask).reshape(input_ids.shape[0], 16)[:, :2]
    with pytest.raises(UserError, match="seq=4"):
        export_onnx(FrozenLength(), example, tmp_path / "m3.onnx", dynamic=Dynamic({"seq": [4, 16]}, TOKENS))
