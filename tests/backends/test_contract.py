"""The engine contract (pipeline/backends/base.py), checked the same way against every registered engine.

Conformance (every engine, TensorRT's device half included, without its runtime): each contract
method is implemented with the contract's signature and the Runner is a base.Runner. Behaviour
(engines whose runtime is here): the quantizer builds a real INT8 artifact of a small model, the
Runner loads it, `prepare` + `run_raw` give what `run` gives, `io()` names the input, and the golden
tolerances and notes are well-formed. A runner with the old TensorRT shape (infer/time, no
prepare/run_raw) is caught."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pipeline import backends
from pipeline.backends import base
from pipeline.backends.onnxruntime import export_onnx
from pipeline.config import load_target
from pipeline.data.inputs import Inputs

ENGINES = list(backends.BACKENDS)
TARGET_OF = {"onnxruntime": "x86-cpu", "tflite": "android", "tensorrt": "jetson"}


@pytest.mark.parametrize("name", ENGINES)
def test_every_engine_conforms_to_the_contract(name):
    engine = backends.get(name)
    assert engine.name == name
    assert base.conformance_problems(type(engine)) == []
    assert engine.int8_file.startswith("model.int8.")
    assert engine.host_runtime in backends.BACKENDS
    ok, reason = engine.available()
    assert isinstance(ok, bool) and (ok or reason)


def test_a_runner_that_does_not_match_the_others_is_caught():
    class OldTrtRunner:       # the shape the TensorRT module had: no prepare / run_raw, another constructor
        def __init__(self, plan_path):
            ...

        def infer(self, x):
            ...

        def time(self, x, warmup, runs):
            ...

    class Broken(base.Engine):
        name, install_hint, int8_file, host_runtime = "broken", "none", "model.int8.x", "onnxruntime"
        Runner = OldTrtRunner

        @classmethod
        def available(cls):
            return False, "never"

        def quantizer(self, job):
            ...

        def compile(self, out):          # wrong signature
            ...

    problems = base.conformance_problems(Broken)
    assert any("Runner is not a pipeline.backends.base.Runner" in p for p in problems)
    assert any("leaves abstract: bench" in p for p in problems)
    assert any("compile" in p and "differs" in p for p in problems)

    class HalfRunner(base.Runner):
        def __init__(self, path, threads=2):
            ...

        def run(self, x):
            ...

    Broken.Runner = HalfRunner
    assert any("Runner leaves abstract: prepare, run_raw" in p for p in base.conformance_problems(Broken))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 4)).eval()
    d = tmp_path_factory.mktemp("contract")
    example = torch.randn(1, 1, 12, 12)
    export_onnx(model, example, d / "float.onnx")
    rng = np.random.default_rng(0)
    return {"model": model, "example": Inputs.of(example.numpy()), "dir": d,
            "calib": Inputs.of(rng.standard_normal((32, 1, 12, 12)).astype(np.float32)),
            "held": Inputs.of(rng.standard_normal((8, 1, 12, 12)).astype(np.float32))}


@pytest.mark.parametrize("name", [n for n in ENGINES if backends.get(n).host_runtime == n])
def test_engine_quantizes_and_runs_here(name, tiny, tmp_path):
    engine = backends.require(name)
    target = load_target(TARGET_OF[name])
    job = base.QuantizeJob(target=target, dest=tmp_path / engine.int8_file, tmp=tmp_path, calib=tiny["calib"],
                           held_x=tiny["held"], method="minmax", per_channel=True, onnx_source=tiny["dir"] / "float.onnx",
                           source=tiny["model"], to_quantize=tiny["model"], example=tiny["example"], model_name="tiny")
    q = engine.quantizer(job)
    assert q.layers and q.reference.shape == (8, 4)
    meta = q.build(())
    assert job.dest.is_file() and isinstance(meta, dict)
    out = q.logits(job.dest)
    assert out.shape == (8, 4) and np.isfinite(out).all()
    assert np.mean(out.argmax(1) == q.reference.argmax(1)) >= 0.5      # INT8 of a float model, not noise

    runner = engine.Runner(job.dest, threads=1)
    assert isinstance(runner, base.Runner)
    x = tiny["held"][:1]
    np.testing.assert_allclose(np.asarray(runner.run_raw(runner.prepare(x)), np.float32).reshape(1, -1).shape, (1, 4))
    full = runner.run(tiny["held"])
    assert full.shape == (8, 4) and full.dtype == np.float32
    io = runner.io()
    assert io["inputs"][0]["name"] == runner.input_name and io["inputs"][0]["layout"] == runner.layout
    tol = engine.golden_tolerance(target, meta.get("output") or {})
    assert tol.max_abs > 0 and 0 < tol.min_argmax_agreement <= 1 and tol.why


def test_tensorrt_host_half_without_tensorrt():
    """What TensorRT's engine does here: its runner is not loadable, its host proxy engine is, and its
    notes, tolerances and toolchain come from the target."""
    engine = backends.get("tensorrt")
    target = load_target("jetson")
    assert engine.host_runtime == "onnxruntime" and backends.get(engine.host_runtime).available()[0]
    assert engine.device_toolchain(target)["tensorrt"] == target.tensorrt.version
    tol = engine.golden_tolerance(target, {})
    assert tol.min_argmax_agreement < 1 and "TensorRT" in tol.why
    assert "build_engine.sh" in engine.bundle_notes(target, {"deliverables": ["model.int8.qdq.onnx"]})
    if not engine.available()[0]:
        from pipeline.errors import UserError
        with pytest.raises(UserError, match="TensorRT"):
            engine.Runner("missing.plan")
