"""pipeline/backends/tflite.py: real litert-torch conversions, run on the LiteRT interpreter.

A tiny residual CNN is trained for 50 steps on Fashion-MNIST, converted to INT8 .tflite files, and
their outputs are compared with torch on 64 test images; the FP32 path is checked on a 3-channel,
non-square model. The assertions are tight enough that a wrong input/output scale or zero point, a
wrong layout, or ops left in float fail them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.backends import tflite
from pipeline.data import load_fashion_mnist
from pipeline.errors import UserError

pytest.importorskip("litert_torch", reason="litert-torch is not installed")
pytest.importorskip("ai_edge_litert", reason="ai-edge-litert is not installed")


class TinyResNet(nn.Module):
    """conv-bn-relu x2 with a residual add, max-pool and a linear head: (C, H, W) -> 10 logits."""

    def __init__(self, channels: int = 1, height: int = 28, width: int = 28):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 8, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(8 * (height // 4) * (width // 4), 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(x + self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    try:
        ds = load_fashion_mnist()
    except UserError as e:
        pytest.skip(e.problem)
    return {
        "train_x": np.asarray(ds.normalize(ds.x_train[:50 * 64])), "train_y": ds.y_train[:50 * 64],
        "calib": np.asarray(ds.normalize(ds.x_train[-256:])),
        "test_x": np.asarray(ds.normalize(ds.x_test[:64])),
    }


@pytest.fixture(scope="module")
def model(data) -> TinyResNet:
    """TinyResNet after 50 Adam steps (batch 64): 72% right on the 64 test images, logits spanning ~18."""
    torch.manual_seed(0)
    net = TinyResNet()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    x, y = torch.from_numpy(data["train_x"]), torch.from_numpy(data["train_y"])
    for step in range(50):
        batch = slice(step * 64, (step + 1) * 64)
        loss = F.cross_entropy(net(x[batch]), y[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def reference(model, data) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(data["test_x"])).numpy()


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tflite")


@pytest.fixture(scope="module")
def example(data) -> torch.Tensor:
    return torch.from_numpy(data["test_x"][:1])


@pytest.fixture(scope="module")
def int8_model(model, example, data, out_dir) -> tuple[Path, dict]:
    path = out_dir / "int8.tflite"
    return path, tflite.convert_int8(model, example, data["calib"], path)


def _check_int8_outputs(out: np.ndarray, reference: np.ndarray) -> None:
    """INT8 logits close to torch: argmax agreement and error relative to the logit range.

    Measured: 100% agreement, mean error 0.2% and max error 0.6% of the range; a wrong scale or zero
    point on either side gives far more.
    """
    span = float(reference.max() - reference.min())
    assert span > 5, "the trained model should have spread-out logits"
    agree = float((out.argmax(1) == reference.argmax(1)).mean())
    assert agree >= 0.9, f"argmax agrees with torch on {agree:.0%} of images"
    assert np.abs(out - reference).mean() < 0.01 * span
    assert np.abs(out - reference).max() < 0.05 * span


def test_available():
    assert tflite.available() == (True, "")


def test_float_nhwc_matches_torch(out_dir):
    """C > 1 and H != W, so any mix-up of NCHW/NHWC or of H and W in the Runner breaks the match."""
    torch.manual_seed(0)
    net = TinyResNet(channels=3, height=20, width=28).eval()
    x = torch.randn(8, 3, 20, 28)
    path = out_dir / "fp32.tflite"
    meta = tflite.convert_float(net, x[:1], path)
    assert meta["layout"] == "NHWC" and meta["input"]["shape"] == [1, 20, 28, 3]
    # no transpose at the NHWC input; the one left puts activations in torch's NCHW flatten order for fc
    assert meta["ops"].get("TRANSPOSE") == 1
    assert meta["ops_quantized"] == 0 and meta["size_bytes"] == path.stat().st_size
    runner = tflite.Runner(path, threads=1)
    assert (runner.layout, runner.io_dtype, runner.input_shape) == ("NHWC", "float32", (1, 3, 20, 28))
    out = runner.run(x.numpy())
    assert out.shape == (8, 10) and out.dtype == np.float32
    with torch.no_grad():
        np.testing.assert_allclose(out, net(x).numpy(), atol=1e-4, rtol=0)


def test_int8_io_quantized_end_to_end(int8_model, data, reference):
    path, meta = int8_model
    assert meta["io_dtype"] == "int8" and meta["layout"] == "NHWC"
    for tensor in (meta["input"], meta["output"]):
        assert tensor["dtype"] == "int8" and tensor["scale"] > 0 and -128 <= tensor["zero_point"] <= 127
    # the input scale must cover the normalized data range in 256 steps
    lo, hi = data["calib"].min(), data["calib"].max()
    assert meta["input"]["scale"] == pytest.approx((hi - lo) / 255, rel=0.01)
    assert meta["float_ops"] == {} and meta["ops_quantized"] == sum(meta["ops"].values())
    assert meta["calibration"] == {"samples": 256, "batch": tflite.CALIB_BATCH}
    runner = tflite.Runner(path, threads=1)
    assert (runner.layout, runner.io_dtype) == ("NHWC", "int8")
    prepared = runner.prepare(data["test_x"][:1])
    assert prepared.dtype == np.int8 and prepared.shape == (1, 28, 28, 1)
    assert runner.run_raw(prepared).dtype == np.int8
    _check_int8_outputs(runner.run(data["test_x"]), reference)


def test_int8_float_io_nchw(int8_model, model, example, data, reference, out_dir):
    path = out_dir / "int8_float_io.tflite"
    meta = tflite.convert_int8(model, example, data["calib"], path, io_dtype="float32", layout="NCHW")
    assert meta["input"]["dtype"] == meta["output"]["dtype"] == "float32"
    assert meta["input"]["shape"] == [1, 1, 28, 28]
    assert meta["ops"]["QUANTIZE"] == 1 and meta["ops"]["DEQUANTIZE"] == 1
    assert meta["float_ops"] == {"DEQUANTIZE": 1}
    runner = tflite.Runner(path, threads=1)
    assert (runner.layout, runner.io_dtype, runner.input_shape) == ("NCHW", "float32", (1, 1, 28, 28))
    out = runner.run(data["test_x"])
    _check_int8_outputs(out, reference)
    # same quantized graph as the int8-I/O file: outputs agree to about one output quantization step
    int8_path, int8_meta = int8_model
    step = int8_meta["output"]["scale"]
    assert np.abs(out - tflite.Runner(int8_path, threads=1).run(data["test_x"])).max() <= 2 * step + 1e-6


def test_float_layers_and_method_note(model, example, data, reference, out_dir):
    path = out_dir / "int8_fc_float.tflite"
    meta = tflite.convert_int8(model, example, data["calib"], path, method="entropy", float_layers=["fc"])
    assert meta["float_layers"] == ["fc"] and "HistogramObserver" in meta["method_note"]
    assert meta["float_ops"].get("FULLY_CONNECTED") == 1 and meta["output"]["dtype"] == "float32"
    assert meta["ops"]["CONV_2D"] + meta["ops"].get("DEPTHWISE_CONV_2D", 0) == 2
    assert "CONV_2D" not in meta["float_ops"] and "DEPTHWISE_CONV_2D" not in meta["float_ops"]
    _check_int8_outputs(tflite.Runner(path, threads=1).run(data["test_x"]), reference)


def test_conversion_is_reproducible(int8_model, model, example, data, out_dir):
    path, meta = int8_model
    again = tflite.convert_int8(model, example, data["calib"], out_dir / "int8_again.tflite")
    assert again["sha256"] == meta["sha256"]


def test_percentile_observer_clips_outliers():
    observer_class, note = tflite.convert._activation_observer("percentile")
    assert "percentile" in note
    x = torch.randn(100_000)
    x[:5] = 50.0  # 0.005% outliers, above the 99.99th percentile
    observer = observer_class(dtype=torch.int8, quant_min=-128, quant_max=127)
    observer(x)
    scale, _ = observer.calculate_qparams()
    assert 4 / 255 < float(scale) < 10 / 255  # about (max - min) of N(0, 1) over 1e5 draws, not 50


@pytest.mark.parametrize("kwargs, phrase", [
    ({"method": "kl"}, "method"),
    ({"io_dtype": "uint8"}, "io_dtype"),
    ({"layout": "CHW"}, "layout"),
    ({"float_layers": ["head"]}, "head"),
])
def test_bad_options_are_user_errors(model, example, data, out_dir, kwargs, phrase):
    with pytest.raises(UserError, match=phrase):
        tflite.convert_int8(model, example, data["calib"], out_dir / "bad.tflite", **kwargs)


@pytest.mark.parametrize("calib, phrase", [
    (np.zeros((4, 1, 32, 32), np.float32), "shape"),
    (np.zeros((0, 1, 28, 28), np.float32), "shape"),
    (np.zeros((4, 1, 28, 28), np.uint8), "uint8"),
    (np.full((4, 1, 28, 28), np.nan, np.float32), "NaN"),
])
def test_bad_calibration_is_user_error(model, example, out_dir, calib, phrase):
    with pytest.raises(UserError, match=phrase):
        tflite.convert_int8(model, example, calib, out_dir / "bad.tflite")


class DataDependent(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) if x.sum() > 0 else -x.flatten(1)


def test_unconvertible_model_is_user_error(example, out_dir):
    with pytest.raises(UserError, match="conversion failed"):
        tflite.convert_float(DataDependent(), example, out_dir / "bad.tflite")


def test_runner_user_errors(int8_model, tmp_path):
    with pytest.raises(UserError, match="not found"):
        tflite.Runner(tmp_path / "missing.tflite")
    (tmp_path / "junk.tflite").write_bytes(b"not a flatbuffer")
    with pytest.raises(UserError, match="cannot load"):
        tflite.Runner(tmp_path / "junk.tflite")
    runner = tflite.Runner(int8_model[0], threads=1)
    with pytest.raises(UserError, match="shape"):
        runner.run(np.zeros((2, 3, 28, 28), np.float32))


class TokenTable(nn.Module):
    """Token ids -> their embedding rows, flattened: the table is the only weight, so the INT8 file's
    output is exactly what its lookup gives back."""

    def __init__(self, vocab: int = 1000, dim: int = 64):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        with torch.no_grad():  # row magnitudes spanning 1000x: one scale for the whole table would crush the small rows
            self.emb.weight.mul_(torch.logspace(-2, 1, vocab)[torch.randperm(vocab, generator=torch.Generator().manual_seed(0))][:, None])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.emb(ids).flatten(1)


def test_int8_embedding_table_is_int8_per_row(out_dir):
    """The token table of an INT8 .tflite is stored int8 with one scale per row (hybrid EMBEDDING_LOOKUP):
    each looked-up row is within half a step of its own scale of the float row, and the file is over 3x
    smaller than with the float32 table (int8 rows, a float32 scale and an int64 zero point per row); naming the table in float_layers keeps it float32."""
    from pipeline.data.inputs import Inputs
    torch.manual_seed(0)
    net = TokenTable().eval()
    ids = np.random.default_rng(0).integers(0, 1000, (64, 12)).astype(np.int64)
    example, calib = Inputs({"ids": ids[:1]}), Inputs({"ids": ids})
    path, kept = out_dir / "table-int8.tflite", out_dir / "table-float.tflite"
    meta = tflite.convert_int8(net, example, calib, path, io_dtype="float32")
    assert [t["shape"] for t in meta["embedding_tables"]["int8"]] == [[1000, 64]]
    w = net.emb.weight.detach().numpy()
    step = np.abs(w).max(1) / 127
    out = tflite.Runner(path, threads=1).run(Inputs({"ids": ids}))
    err = np.abs(out.reshape(64, 12, 64) - w[ids]) / step[ids][..., None]
    assert err.max() <= 0.5 + 1e-3, f"a looked-up value is {err.max():.2f} steps of its row's scale off"
    meta_kept = tflite.convert_int8(net, example, calib, kept, io_dtype="float32", float_layers=["emb"])
    assert meta_kept["embedding_tables"]["int8"] == [] and "emb" in meta_kept["embedding_tables"]["note"]
    np.testing.assert_allclose(tflite.Runner(kept, threads=1).run(Inputs({"ids": ids})).reshape(64, 12, 64), w[ids],
                               rtol=1e-6, atol=0)
    assert kept.stat().st_size > w.nbytes > 3 * path.stat().st_size
