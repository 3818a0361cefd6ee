"""Any model a user brings, end to end on real engines (ONNX Runtime and LiteRT): a two-input model
(image + metadata vector), an int64 token-id transformer encoder, a 1-D conv on (N, C, T), a tabular
regressor and a 2-layer LSTM, each through x86-cpu and android with its metric in the report; a 3x32x32
RGB model on every shipped target with no target edits; and the refusals that keep a wrong number
from looking like success (a flattened detector, labels that are not labels, inputs that do not match
forward()). Models and data: tests/e2e/any_models.py."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import any_models as am  # noqa: E402

from pipeline.config import available_targets  # noqa: E402
from pipeline.errors import UserError  # noqa: E402
from pipeline.tasks import resolve  # noqa: E402

MODELS = "tests/e2e/any_models.py"
FAST = ["--set", "distill.epochs=1", "--set", "evaluate.runs=20", "--set", "evaluate.warmup=5",
        "--set", "load.latency_runs=10", "--set", "quantize.heldout_samples=200", "--set", "quantize.fallback=false"]
KINDS = {   # kind: (make, factory, task, metric, input names)
    "two-input": (am.make_two_input, "two_input", "classification", "top1", ["image", "meta"]),
    "tokens": (am.make_tokens, "tiny_encoder", "classification", "top1", ["input_ids", "attention_mask"]),
    "audio-1d": (am.make_audio, "conv1d", "classification", "top1", ["input"]),
    "tabular-regression": (am.make_tabular, "tabular", "regression", "mae", ["input"]),
    "lstm": (am.make_sequence, "lstm", "classification", "top1", ["input"]),
}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Data and a briefly trained teacher for every kind (and the RGB model)."""
    d = tmp_path_factory.mktemp("any-models")
    out = {}
    for kind, (make, factory, task, _, _) in {**KINDS, "rgb": (am.make_rgb, "rgb32", "classification", "", [])}.items():
        make(d / f"{kind}.npz")
        model = am.train(getattr(am, factory)(), d / f"{kind}.npz", regression=task == "regression")
        torch.save(model.state_dict(), d / f"{kind}.pt")
        out[kind] = (d / f"{kind}.npz", d / f"{kind}.pt")
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(KINDS))
def test_model_kind_end_to_end_on_ort_and_litert(kind, made, run_cli, tmp_path):
    _, factory, task, metric, names = KINDS[kind]
    data, weights = made[kind]
    out = tmp_path / "run"
    # The token model also declares its dynamic axes and adds a TensorRT target: one export, one profile
    # and one latency row per shape.
    dyn = ["--dynamic", "batch=1..4", "--dynamic", "seq=8..16"] if kind == "tokens" else []
    targets = "x86-cpu,android" + (",jetson" if dyn else "")
    r = run_cli("run", "--task", task, "--model", f"{MODELS}:{factory}", "--weights", str(weights), "--data", str(data),
                "--target", targets, "--out", str(out), *dyn, *FAST)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["metric"]["name"] == metric and report["task"]["name"] == task
    assert report["metric"]["higher_is_better"] == (task == "classification")
    assert [i["name"] for i in report["inputs"]] == names
    rows = {a["name"]: a for a in report["artifacts"]}
    for name in ("teacher", "x86-cpu: INT8 ONNX", "x86-cpu: FP32 ONNX", "android: INT8 TFLite", "android: FP32 TFLite"):
        assert rows[name]["accuracy"] is not None and metric in rows[name]["metrics"], name
    teacher = rows["teacher"]["accuracy"]
    if task == "classification":           # a trained teacher, far above chance (2-4 classes)
        assert teacher > 0.8
    else:
        assert teacher < 0.8 * float(np.std(np.load(data)["y_test"]))     # better than predicting the mean
    for t in report["targets"]:
        assert "accuracy_drop" in t["measured"] and t["deliverable"]
    man = json.loads((out / "handoff" / "android" / "manifest.json").read_text())
    assert [i["name"] for i in man["inputs"]] == names
    if kind == "tokens":                   # int64 ids in torch and ONNX, int32 on the LiteRT device
        assert {i["runtime"]["dtype"] for i in man["inputs"]} == {"int32"}
        onnx_man = json.loads((out / "handoff" / "x86-cpu" / "manifest.json").read_text())
        assert {i["runtime"]["dtype"] for i in onnx_man["inputs"]} == {"int64"}
    if dyn:
        check_dynamic(out, report)
    if kind == "lstm":
        log = (out / "log.txt").read_text()
        assert "recurrent layers lstm are not pruned" in log
        # nothing prunable: distillation must not ship something worse than the model it started from
        assert rows["distilled"]["accuracy"] >= teacher - 0.02
    if len(names) > 1:                     # the bundle's golden samples carry every named input
        verify = run_cli("verify", str(out / "handoff"), "--runs", "5")
        assert verify.returncode == 0, verify.stdout[-2000:] + verify.stderr[-2000:]


def check_dynamic(out, report):
    """--dynamic batch=1..4 seq=8..16 on the token model (data: 16 tokens)."""
    import onnx
    x86 = out / "handoff" / "x86-cpu"
    onnx_in = onnx.load(str(x86 / json.loads((x86 / "manifest.json").read_text())["deliverable"])).graph.input
    assert [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in onnx_in] == [["batch", "seq"]] * 2
    assert report["dynamic"] == {"batch": [1, 4], "seq": [8, 16]}
    rows = {a["name"]: a for a in report["artifacts"]}
    want = ["batch=1 seq=8", "batch=1 seq=16", "batch=4 seq=8", "batch=4 seq=16"]
    for name in ("teacher", "x86-cpu: INT8 ONNX", "x86-cpu: FP32 ONNX"):
        by_shape = rows[name]["latency_by_shape"]
        assert [s["shape"] for s in by_shape] == want and all(s["p50_ms"] > 0 for s in by_shape), name
        assert by_shape[3]["inputs"] == {"input_ids": [4, 16], "attention_mask": [4, 16]}
    tfl = {s["shape"]: s["p50_ms"] for s in rows["android: INT8 TFLite"]["latency_by_shape"]}
    assert tfl["batch=1 seq=16"] > 0 and [k for k, v in tfl.items() if v is None] == [w for w in want if w != "batch=1 seq=16"]
    md = (out / "report.md").read_text()
    assert "## Latency by shape" in md and "| batch=4 seq=16 |" in md and "android: INT8 TFLite: fixed input shape" in md
    sh = (out / "handoff" / "jetson" / "build_engine.sh").read_text()
    assert "--minShapes=input_ids:1x8,attention_mask:1x8" in sh and "--maxShapes=input_ids:4x16,attention_mask:4x16" in sh
    prof = json.loads((out / "handoff" / "jetson" / "build_engine.json").read_text())["profiles"]
    assert prof["attention_mask"] == [[1, 8], [4, 16], [4, 16]]
    comp = json.loads((out / "compile-jetson" / "stage.json").read_text())["metrics"]
    assert not [p for p in comp["compat_problems"] if p["rule"] == "dynamic-shape"], comp["compat_problems"]
    man = {t: json.loads((out / "handoff" / t / "manifest.json").read_text()) for t in ("x86-cpu", "android")}
    assert man["x86-cpu"]["inputs"][0]["dynamic_axes"] == {"0": {"symbol": "batch", "min": 1, "max": 4},
                                                          "1": {"symbol": "seq", "min": 8, "max": 16}}
    assert "fixed_shape" in man["android"]["inputs"][0] and man["android"]["inputs"][0]["runtime"]["shape"] == [1, 16]


@pytest.mark.slow
def test_rgb_model_on_every_shipped_target_without_target_edits(made, run_cli, tmp_path):
    data, weights = made["rgb"]
    targets = ",".join(available_targets())
    r = run_cli("run", "--model", f"{MODELS}:rgb32", "--weights", str(weights), "--data", str(data), "--target", targets,
                "--out", str(tmp_path / "rgb"), "--set", "prune.enabled=false", *FAST)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "rgb" / "report.json").read_text())
    assert {t["name"] for t in report["targets"]} == set(available_targets())
    assert report["inputs"][0]["shape"] == [3, 32, 32]


def test_flattened_detector_is_refused_at_load(made, run_cli, tmp_path):
    data, _ = made["rgb"]
    r = run_cli("run", "--model", f"{MODELS}:flat_detector", "--data", str(data), "--target", "x86-cpu",
                "--out", str(tmp_path / "flat"))
    assert r.returncode == 2
    line = r.stderr.strip().splitlines()[-1]
    assert "125 outputs" in line and "3 classes" in line and "--task" in line and "Traceback" not in r.stderr
    assert not (tmp_path / "flat" / "load" / "stage.json").exists()


def test_inputs_that_do_not_match_forward_are_refused(made, run_cli, tmp_path):
    data, weights = made["two-input"]
    z = dict(np.load(data))
    bad = tmp_path / "renamed.npz"
    np.savez(bad, **{k.replace("meta_", "metadata_"): v for k, v in z.items()})
    r = run_cli("run", "--model", f"{MODELS}:two_input", "--weights", str(weights), "--data", str(bad),
                "--target", "x86-cpu", "--out", str(tmp_path / "bad"), "--until", "load")
    assert r.returncode == 2 and "do not match forward(image, meta)" in r.stderr, r.stderr


@pytest.mark.parametrize("y, message", [
    (np.eye(3)[np.arange(10) % 3], "one-hot"),
    (np.linspace(0, 1, 10), "not integer class indices"),
    (-np.ones(10, np.int64), "is negative"),
    (np.full(10, 10 ** 12), "more than"),
    (np.array(["a"] * 10), "text"),
])
def test_classification_labels_get_their_own_message(y, message):
    with pytest.raises(UserError, match=message):
        resolve("classification").read_targets(y, "train", "data.npz")


def test_task_plugin_from_a_file(tmp_path):
    plugin = tmp_path / "mytask.py"
    plugin.write_text(
        "import numpy as np\nfrom pipeline.tasks.regression import Regression\nfrom pipeline.tasks.base import Metric\n"
        "class MaxError(Regression):\n    name = 'max-error'\n    metrics = (Metric('max_err', False, 'units'),)\n"
        "    def evaluate(self, outputs, y):\n        return {'max_err': float(np.abs(outputs.reshape(y.shape) - y).max())}\n")
    with pytest.raises(UserError, match="outside this repository"):
        resolve(f"{plugin}:MaxError")
    task = resolve(f"{plugin}:MaxError", trust=True)
    assert task.primary.name == "max_err" and not task.primary.higher_is_better
    assert task.score(np.array([[1.0], [2.0]]), np.array([1.5, 2.0], np.float32)) == 0.5
