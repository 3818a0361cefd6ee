"""pipeline/backends/onnxruntime.py: export, INT8 QDQ quantization and the CPU runner, on real
Fashion-MNIST with a small CNN trained for 100 steps in the fixture."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from pipeline.backends import onnxruntime as ort_backend
from pipeline.errors import UserError
from pipeline.models.resnet import small_resnet


def tiny_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, 1, 1), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 7 * 7, 10))


@pytest.fixture(scope="module")
def trained(fmnist, tmp_path_factory, train_briefly) -> dict:
    """A 2-layer CNN trained 100 steps on real data, its FP32 ONNX, test images and calibration images."""
    torch.manual_seed(0)
    model = tiny_cnn()
    x_tr = torch.from_numpy(np.asarray(fmnist.normalize(fmnist.x_train[:6400])))
    y_tr = torch.from_numpy(fmnist.y_train[:6400])
    train_briefly(model, x_tr, y_tr)
    d = tmp_path_factory.mktemp("ort")
    x_test = np.asarray(fmnist.normalize(fmnist.x_test[:256]))
    meta = ort_backend.export_onnx(model, torch.from_numpy(x_test[:1]), d / "fp32.onnx")
    return {"model": model, "dir": d, "onnx": d / "fp32.onnx", "meta": meta, "x": x_test, "y": fmnist.y_test[:256],
            "calib": np.asarray(fmnist.normalize(fmnist.x_train[-256:]))}


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_available():
    ok, reason = ort_backend.available()
    assert ok and reason.startswith("onnxruntime ") and "CPUExecutionProvider" in reason


def test_export_small_resnet_is_static_simplified_and_deterministic(tmp_path):
    torch.manual_seed(0)
    model, x = small_resnet().eval(), torch.randn(1, 1, 28, 28)
    a = ort_backend.export_onnx(model, x, tmp_path / "a.onnx")
    b = ort_backend.export_onnx(model, x, tmp_path / "b.onnx")
    assert sha(tmp_path / "a.onnx") == sha(tmp_path / "b.onnx") == a["sha256"] == b["sha256"]
    assert a["opset"] == 17 and a["exporter"].startswith("torch.onnx.export (TorchScript")
    assert a["input"] == {"name": "input", "shape": [1, 1, 28, 28]}
    assert a["output"] == {"name": "logits", "shape": [1, 10]}
    # BatchNorm folded into Conv, Identity nodes removed, pooling kept as GlobalAveragePool
    assert set(a["op_types"]) == {"Conv", "Relu", "Add", "GlobalAveragePool", "Flatten", "Gemm"}
    assert a["max_abs_diff_vs_torch"] < 1e-4
    m = onnx.load(str(tmp_path / "a.onnx"))
    assert next(o.version for o in m.opset_import if o.domain == "") == 17
    assert model.training is False


def test_export_keeps_training_flag_and_dynamic_batch(trained, tmp_path):
    model = trained["model"].train()
    meta = ort_backend.export_onnx(model, torch.from_numpy(trained["x"][:1]), tmp_path / "dyn.onnx", dynamic_batch=True)
    assert model.training, "export must restore the caller's train/eval mode"
    model.eval()
    assert meta["input"]["shape"] == ["batch", 1, 28, 28] and meta["dynamic_batch"]
    dyn, static = ort_backend.Runner(tmp_path / "dyn.onnx"), ort_backend.Runner(trained["onnx"])
    assert dyn.input_shape == (None, 1, 28, 28) and static.input_shape == (1, 1, 28, 28)
    np.testing.assert_allclose(dyn.run(trained["x"][:9]), static.run(trained["x"][:9]), atol=1e-5)


def test_export_rejects_bad_arguments(trained, tmp_path):
    with pytest.raises(UserError, match="opset 16"):
        ort_backend.export_onnx(trained["model"], torch.zeros(1, 1, 28, 28), tmp_path / "x.onnx", opset=16)
    with pytest.raises(UserError, match="float32 torch.Tensor"):
        ort_backend.export_onnx(trained["model"], np.zeros((1, 1, 28, 28), np.float32), tmp_path / "x.onnx")


def test_runner_matches_torch_and_loops_a_fixed_batch(trained):
    r = ort_backend.Runner(trained["onnx"], threads=1, opt_level="basic")
    assert r.input_name == "input" and r.layout == "NCHW"
    out = r.run(trained["x"][:7])
    with torch.no_grad():
        ref = trained["model"](torch.from_numpy(trained["x"][:7])).numpy()
    assert out.dtype == np.float32 and out.shape == (7, 10)
    np.testing.assert_allclose(out, ref, atol=1e-4)
    p = r.prepare(trained["x"])
    assert p.shape == (1, 1, 28, 28) and p.flags.c_contiguous
    np.testing.assert_allclose(r.run_raw(p), out[:1], atol=1e-6)


def test_runner_errors_are_user_errors(trained, tmp_path):
    with pytest.raises(UserError, match="not found"):
        ort_backend.Runner(tmp_path / "missing.onnx")
    with pytest.raises(UserError, match="optimization level"):
        ort_backend.Runner(trained["onnx"], opt_level="max")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(UserError, match="cannot load"):
        ort_backend.Runner(tmp_path / "junk.onnx")
    r = ort_backend.Runner(trained["onnx"])
    with pytest.raises(UserError, match="expects"):
        r.run(np.zeros((2, 1, 32, 32), np.float32))
    with pytest.raises(UserError, match="expects"):
        r.run(np.zeros((28, 28), np.float32))


def weight_dq(model: onnx.ModelProto, conv: onnx.NodeProto) -> onnx.NodeProto | None:
    producers = {o: n for n in model.graph.node for o in n.output}
    return producers.get(conv.input[1])


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_quantize_int8_runs_and_agrees_with_fp32(trained, method):
    out = trained["dir"] / f"int8-{method}.onnx"
    meta = ort_backend.quantize_int8(trained["onnx"], trained["calib"], out, method=method)
    assert meta["method"] == method and meta["activation_type"] == "QUInt8" and meta["weight_type"] == "QInt8"
    assert meta["n_calibration"] == 256 and meta["excluded"] == [] and meta["sha256"] == sha(out)
    assert meta["n_quantize_linear"] > 0 and meta["n_dequantize_linear"] > meta["n_quantize_linear"]
    # both convs and the classifier are quantized
    assert meta["float_layers"] == [] and meta["n_quantized_nodes"] >= 3
    m = onnx.load(str(out))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    for conv in (n for n in m.graph.node if n.op_type == "Conv"):
        dq = weight_dq(m, conv)
        assert dq.op_type == "DequantizeLinear" and inits[dq.input[0]].dtype == np.int8
        scale = inits[dq.input[1]]
        assert scale.shape == (inits[dq.input[0]].shape[0],), "per-channel weight scale"
        assert not np.any(inits[dq.input[2]]), "symmetric int8 weights"
    fp32 = ort_backend.Runner(trained["onnx"]).run(trained["x"])
    q = ort_backend.Runner(out).run(trained["x"])
    agreement = float((q.argmax(1) == fp32.argmax(1)).mean())
    acc_fp32 = float((fp32.argmax(1) == trained["y"]).mean())
    acc_int8 = float((q.argmax(1) == trained["y"]).mean())
    assert acc_fp32 > 0.7, "the fixture model must have learned something"
    assert agreement >= 0.96, f"{method}: argmax agreement {agreement}"
    assert acc_fp32 - acc_int8 <= 0.02, f"{method}: accuracy {acc_fp32} -> {acc_int8}"


def test_entropy_gives_the_minmax_model_in_this_onnxruntime(trained):
    """Documents (and watches) the pitfall recorded in ENTROPY_NOTE: onnxruntime's entropy
    calibration, as quantize_static runs it, returns the MinMax ranges."""
    d = trained["dir"]
    ent = ort_backend.quantize_int8(trained["onnx"], trained["calib"], d / "ent.onnx", method="entropy")
    mm = ort_backend.quantize_int8(trained["onnx"], trained["calib"], d / "mm.onnx", method="minmax")
    assert ent["note"] == ort_backend.ENTROPY_NOTE and "note" not in mm
    assert ent["sha256"] == mm["sha256"]


def test_quantize_int8_excludes_nodes_and_symmetric_activations(trained):
    first_conv = next(n.name for n in onnx.load(str(trained["onnx"])).graph.node if n.op_type == "Conv")
    out = trained["dir"] / "int8-excl.onnx"
    meta = ort_backend.quantize_int8(trained["onnx"], trained["calib"], out, exclude_nodes=[first_conv],
                                     activation_symmetric=True, per_channel=False)
    assert meta["excluded"] == [first_conv] and meta["float_layers"] == [first_conv]
    assert meta["activation_symmetric"] and not meta["per_channel"]
    m = onnx.load(str(out))
    conv = next(n for n in m.graph.node if n.name == first_conv)
    assert weight_dq(m, conv) is None or weight_dq(m, conv).op_type != "DequantizeLinear"
    assert ort_backend.Runner(out).run(trained["x"][:4]).shape == (4, 10)


def test_quantize_int8_user_errors(trained, tmp_path):
    calib, src, out = trained["calib"], trained["onnx"], tmp_path / "q.onnx"
    with pytest.raises(UserError, match="calibration method"):
        ort_backend.quantize_int8(src, calib, out, method="kl")
    with pytest.raises(UserError, match="empty"):
        ort_backend.quantize_int8(src, calib[:0], out)
    with pytest.raises(UserError, match="model expects"):
        ort_backend.quantize_int8(src, np.zeros((4, 3, 28, 28), np.float32), out)
    with pytest.raises(UserError, match="float32"):
        ort_backend.quantize_int8(src, (calib * 255).astype(np.uint8), out)
    with pytest.raises(UserError, match="not found in the graph"):
        ort_backend.quantize_int8(src, calib, out, exclude_nodes=["/no/such/Conv"])
    with pytest.raises(UserError, match="not found"):
        ort_backend.quantize_int8(tmp_path / "missing.onnx", calib, out)


def test_attention_graph_quantizes_only_its_linears(tmp_path):
    """A token-id encoder with an additive attention mask: with every op in INT8 the mask's -1e4 sets
    activation scales that flatten the attention (top-1 near chance); the linears-only rule keeps it."""
    import sys
    sys.path.insert(0, str(Path(__file__).parents[1] / "e2e"))
    import any_models as am
    from pipeline.backends.onnxruntime import quantize as q
    from pipeline.data.inputs import Inputs

    am.make_tokens(tmp_path / "t.npz")
    d = np.load(tmp_path / "t.npz")
    model = am.train(am.tiny_encoder(), tmp_path / "t.npz")
    train = Inputs({"input_ids": d["input_ids_train"], "attention_mask": d["attention_mask_train"]})
    test = {"input_ids": d["input_ids_test"], "attention_mask": d["attention_mask_test"]}
    ort_backend.export_onnx(model, train[:1], tmp_path / "f.onnx")
    Runner = ort_backend.Runner
    fp32 = (Runner(tmp_path / "f.onnx").run(test).argmax(1) == d["y_test"]).mean()
    meta = q.quantize_int8(tmp_path / "f.onnx", train[:256], tmp_path / "i.onnx")
    assert meta["op_types_quantized"] == ["MatMul", "Gemm", "Conv"] and "Softmax" in meta["op_types_reason"]
    # the token table (float, gathered by the ids) is stored int8 per row, not left float
    assert [t["shape"] for t in meta["embedding_tables"]["int8"]] == [[64, 32]]
    tables = [t for t in onnx.load(str(tmp_path / "i.onnx")).graph.initializer if len(t.dims) == 2 and t.dims[0] == 64]
    assert tables and all(t.data_type != onnx.TensorProto.FLOAT for t in tables if t.dims[1] != 1)
    int8 = (Runner(tmp_path / "i.onnx").run(test).argmax(1) == d["y_test"]).mean()
    assert fp32 > 0.9 and int8 >= fp32 - 0.02
    # every op quantized (the rule off): the collapse the rule exists for
    q.quantize_int8(tmp_path / "f.onnx", train[:256], tmp_path / "all.onnx", op_types="all")
    everything = (Runner(tmp_path / "all.onnx").run(test).argmax(1) == d["y_test"]).mean()
    assert everything < fp32 - 0.2


def test_int8_gather_tables_dequantize_each_row_with_its_own_scale(tmp_path):
    """An embedding lookup rewritten by int8_gather_tables, run in ONNX Runtime: every looked-up value is
    within half a step of its own row's scale of the float table (row magnitudes span 1000x, so a single
    scale for the table would miss by far more), and the file shrinks about 3.5x."""
    from pipeline.backends.onnxruntime.embedding import int8_gather_tables

    class Table(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(1000, 64)
            with torch.no_grad():
                self.emb.weight.mul_(torch.logspace(-2, 1, 1000)[torch.randperm(1000, generator=torch.Generator().manual_seed(0))][:, None])

        def forward(self, ids):
            return self.emb(ids).flatten(1)

    torch.manual_seed(0)
    net = Table().eval()
    ids = np.random.default_rng(0).integers(0, 1000, (8, 12)).astype(np.int64)
    from pipeline.data.inputs import Inputs
    ort_backend.export_onnx(net, Inputs({"ids": ids[:1]}), tmp_path / "f.onnx")
    model = onnx.load(str(tmp_path / "f.onnx"))
    done = int8_gather_tables(model)
    assert [t["shape"] for t in done] == [[1000, 64]] and done[0]["max_error_steps"] <= 0.5
    onnx.save(model, str(tmp_path / "q.onnx"))
    w = net.emb.weight.detach().numpy()
    out = ort_backend.Runner(tmp_path / "q.onnx").run(Inputs({"ids": ids})).reshape(8, 12, 64)
    err = np.abs(out - w[ids]) / (np.abs(w).max(1) / 127)[ids][..., None]
    assert err.max() <= 0.5 + 1e-3
    assert (tmp_path / "f.onnx").stat().st_size > 3 * (tmp_path / "q.onnx").stat().st_size
    # a Gather named as excluded keeps its float table
    kept = onnx.load(str(tmp_path / "f.onnx"))
    assert int8_gather_tables(kept, {n.name for n in kept.graph.node if n.op_type == "Gather"}) == []
