"""pipeline/stages/load.py: the teacher's files and figures, and a cache key made of whole config sections."""
from __future__ import annotations

import json

import numpy as np
import torch

from pipeline import models
from pipeline.backends.onnxruntime import Runner
from pipeline.config import RunConfig, load_target
from pipeline.data import load_npz
from pipeline.runner import Context
from pipeline.stages.distill import DistillStage
from pipeline.stages.load import LoadStage


def test_load_writes_the_teacher_as_files(small_run):
    rec = json.loads((small_run / "load" / "stage.json").read_text())
    m = rec["metrics"]
    assert {"model.pt", "model.pt2", "model.onnx", "data.json"} <= set(rec["outputs"])
    assert 0.8 < m["accuracy"] <= 1 and m["params"] > 0 and m["macs"] > 0
    assert m["onnx_max_abs_diff"] < 1e-3 and m["latency_engine"] == "torch-eager"
    data = json.loads((small_run / "load" / "data.json").read_text())
    assert data["input_shape"] == [1, 1, 28, 28] and len(data["classes"]) == 10
    # the ONNX the later stages read answers like the torch model the stage saved
    spec = models.parse_spec("default")
    model = models.load_model(spec, small_run / "load" / "model.pt").eval()
    x = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert np.abs(Runner(small_run / "load" / "model.onnx", threads=1).run(x) - ref).max() < 1e-3


def test_cache_key_is_whole_sections(small_npz, tmp_path):
    """A stage's fingerprint follows every setting of the sections it declares, except the settings
    declared as speed-only; nobody keeps a list of keys."""
    ds = load_npz(small_npz)

    def fp(stage, cfg):
        return stage.config_slice(Context(tmp_path, cfg, [load_target("x86-cpu")], lambda: ds))

    base = RunConfig(data=str(small_npz))
    assert fp(LoadStage(), base) != fp(LoadStage(), base.model_copy(update={"load": base.load.model_copy(
        update={"latency_runs": 7})}))
    d = base.distill
    assert fp(DistillStage(), base) != fp(DistillStage(), base.model_copy(update={"distill": d.model_copy(
        update={"feature_weight": 2.0})}))
    for speed_only in ({"device": "cpu"}, {"checkpoint_every": 7}, {"feature_cache_mb": 1}):
        assert fp(DistillStage(), base) == fp(DistillStage(), base.model_copy(update={"distill": d.model_copy(
            update=speed_only)}))
