"""prune on the shapes of the model zoos: channel shuffle, squeeze-excite, timm-style attention, grouped
convs, end to end through `--until prune`; a group torch-pruning cannot follow is left unpruned and
named; MACs counted for every module (cross-checked against the ONNX graph). The same on torchvision /
timm architectures when those are installed (benchmarks/requirements-zoo.txt)."""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from pipeline import models
from pipeline.backends.onnxruntime import export_onnx
from pipeline.compress.prune import Setup, protected_layers, prune_to_budget
from pipeline.config import PruneConfig
from pipeline.errors import UserError
from pipeline.models import zoo

ROOT = Path(__file__).resolve().parents[2]
X = torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(0))

# One file of factories, as a user would write it: the CLI imports it with --trust-model.
ZOO_SHAPES = '''
import torch
from torch import nn


def cbr(c_in, c_out, k=3, s=1, g=1):
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class Head(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.fc = nn.Linear(c, 10)

    def forward(self, x):
        return self.fc(x.mean((2, 3)))


def shuffle(x, groups=2):
    b, c, h, w = x.shape
    return x.reshape(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleBlock(nn.Module):
    """ShuffleNetV2 unit: split, one branch through 1x1-dw3x3-1x1, concat, channel shuffle."""

    def __init__(self, c):
        super().__init__()
        h = c // 2
        self.branch = nn.Sequential(cbr(h, h, 1), nn.Conv2d(h, h, 3, 1, 1, groups=h, bias=False),
                                    nn.BatchNorm2d(h), cbr(h, h, 1))

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        return shuffle(torch.cat([a, self.branch(b)], 1))


def shufflenet():
    return nn.Sequential(cbr(1, 32, s=2), cbr(32, 48, s=2), ShuffleBlock(48), ShuffleBlock(48), cbr(48, 64, 1), Head(64))


class SE(nn.Module):
    def __init__(self, c, r=4):
        super().__init__()
        self.down, self.up = nn.Conv2d(c, c // r, 1), nn.Conv2d(c // r, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.up(torch.relu(self.down(x.mean((2, 3), keepdim=True)))))


class SameConv(nn.Conv2d):
    """timm's Conv2dSame: a Conv2d subclass that pads in forward (torch-pruning's counter saw zero)."""

    def forward(self, x):
        return nn.functional.conv2d(nn.functional.pad(x, (0, 1, 0, 1)), self.weight, self.bias, self.stride, 0,
                                    self.dilation, self.groups)


def se_net():
    return nn.Sequential(SameConv(1, 32, 3, 2, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                         cbr(32, 96, 1), cbr(96, 96, 3, 2, g=96), SE(96), cbr(96, 48, 1), cbr(48, 64, 1), Head(64))


class Attention(nn.Module):
    """timm 1.0 Attention: one qkv Linear, integer num_heads, head_dim and attn_dim, fused attention."""

    def __init__(self, d, heads):
        super().__init__()
        self.num_heads, self.head_dim = heads, d // heads
        self.attn_dim = heads * self.head_dim
        self.qkv, self.proj = nn.Linear(d, 3 * self.attn_dim), nn.Linear(self.attn_dim, d)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        y = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, n, self.attn_dim))


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.n1, self.n2, self.attn = nn.LayerNorm(d), nn.LayerNorm(d), Attention(d, heads)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x):
        x = x + self.attn(self.n1(x))
        return x + self.mlp(self.n2(x))


class ViT(nn.Module):
    def __init__(self, d=64, heads=4):
        super().__init__()
        self.patch = nn.Conv2d(1, d, 7, 7)
        self.blocks = nn.Sequential(Block(d, heads), Block(d, heads))
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, 10)

    def forward(self, x):
        return self.head(self.norm(self.blocks(self.patch(x).flatten(2).transpose(1, 2))).mean(1))


def vit():
    return ViT()


class XBlock(nn.Module):
    def __init__(self, c_in, c, s, groups):
        super().__init__()
        self.f = nn.Sequential(cbr(c_in, c, 1), cbr(c, c, 3, s, g=groups), nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c))
        self.short = nn.Sequential(nn.Conv2d(c_in, c, 1, s, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return torch.relu(self.f(x) + self.short(x))


def resnext():
    return nn.Sequential(cbr(1, 32, s=2), XBlock(32, 64, 1, 8), XBlock(64, 128, 2, 8), Head(128))


class Masked(nn.Module):
    """Every prunable group ends in a fixed-size buffer: nothing can be pruned."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3, padding=1)
        self.register_buffer("mask", torch.ones(1, 16, 1, 1))
        self.head = Head(16)

    def forward(self, x):
        return self.head(self.conv(x) * self.mask)


def masked():
    return Masked()
'''


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    d = tmp_path_factory.mktemp("zoo")
    (d / "zoo_shapes.py").write_text(ZOO_SHAPES)
    rng = np.random.default_rng(0)
    np.savez(d / "data.npz", x_train=rng.integers(0, 256, (256, 1, 28, 28), dtype=np.uint8),
             y_train=rng.integers(0, 10, 256), x_test=rng.integers(0, 256, (64, 1, 28, 28), dtype=np.uint8),
             y_test=rng.integers(0, 10, 64))
    sys.path.insert(0, str(d))
    import zoo_shapes
    yield d, zoo_shapes
    sys.path.remove(str(d))


def prune_run(d: Path, factory: str, out: Path) -> int:
    """`python -m pipeline run ... --until prune`, in this process (the CLI's own main: no interpreter start)."""
    from pipeline.cli import main
    return main(["run", "--model", f"{d / 'zoo_shapes.py'}:{factory}", "--trust-model", "--data", str(d / "data.npz"),
                 "--target", "x86-cpu", "--out", str(out), "--until", "prune", "--set", "load.latency_runs=5",
                 "--set", "evaluate.test_limit=64"])


@pytest.mark.parametrize("factory", ["shufflenet", "se_net", "vit", "resnext"])
def test_zoo_shape_prunes_end_to_end(factory, shapes, tmp_path, capsys):
    d, _ = shapes
    assert prune_run(d, factory, tmp_path / "run") == 0, capsys.readouterr().err[-2000:]
    m = json.loads((tmp_path / "run" / "prune" / "stage.json").read_text())["metrics"]
    assert abs(m["macs_fraction"] - 0.5) <= 0.02 and m["onnx_max_abs_diff"] < 1e-3
    excluded = m["excluded_groups"]
    if factory == "shufflenet":
        # The groups whose channels pass through the shuffle are left unpruned, named by real modules.
        assert excluded and all(g["reason"] for g in excluded)
        names = set(dict(getattr(shapes[1], factory)().named_modules()))
        assert all(g["root"] in names and set(g["modules"]) <= names for g in excluded)
        assert any(b > a for b, a in m["channels"].values() if a is not None)   # the rest is pruned
    else:
        assert excluded == []


def test_nothing_prunable_is_refused_naming_the_modules(shapes, tmp_path, capsys):
    d, _ = shapes
    assert prune_run(d, "masked", tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "can prune none" in err and "'conv'" in err, err[-1000:]


def onnx_macs(path: Path) -> int:
    """MACs of the Conv, Gemm and MatMul nodes of an ONNX graph (shapes from ONNX shape inference)."""
    g = onnx.shape_inference.infer_shapes(onnx.load(str(path))).graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*g.value_info, *g.input, *g.output]}
    shapes.update({t.name: list(t.dims) for t in g.initializer})
    total = 0
    for n in g.node:
        if n.op_type == "Conv":
            w, out = shapes[n.input[1]], shapes[n.output[0]]
            total += math.prod(out) * math.prod(w[1:])
        elif n.op_type in ("Gemm", "MatMul"):
            a, out = shapes[n.input[0]], shapes[n.output[0]]
            total += math.prod(out) * a[-1]
    return total


@pytest.mark.parametrize("factory", ["se_net", "vit"])
def test_macs_count_every_module_like_the_onnx_graph(factory, shapes, tmp_path):
    model = getattr(shapes[1], factory)().eval()
    total, parts = models.count_macs(model, X, breakdown=True)
    export_onnx(model, X, tmp_path / "m.onnx")
    ref = onnx_macs(tmp_path / "m.onnx")
    assert abs(parts["matmul"] - ref) / ref < 0.01, (parts, ref)      # bias adds are the only difference
    assert total > parts["matmul"]


def test_macs_unchanged_for_plain_modules(shapes):
    import torch_pruning as tp
    model = shapes[1].resnext().eval()
    assert models.count_macs(model, X) == int(tp.utils.count_ops_and_params(model, X)[0])


# ---------------------------------------------------------------- the real zoos, when installed
ZOO = {"tv/shufflenet_v2_x0_5": "channel shuffle", "tv/mobilenet_v3_small": "squeeze-excite",
       "timm/vit_tiny_patch16_224": "transformer (timm Attention)", "timm/regnetx_002": "grouped convs"}


# The squeeze-excite and grouped-conv shapes are covered above and by benchmarks/zoo_coverage.py; their
# real models (15 s each on 2 busy cores) run with EDGE_COMPRESS_ZOO_ALL=1.
QUICK = ("tv/shufflenet_v2_x0_5", "timm/vit_tiny_patch16_224")


@pytest.mark.parametrize("name", list(ZOO))
def test_real_zoo_architecture(name, tmp_path):
    if name not in QUICK and not os.environ.get("EDGE_COMPRESS_ZOO_ALL"):
        pytest.skip(f"{ZOO[name]}: covered by the local shapes; set EDGE_COMPRESS_ZOO_ALL=1 to run the real model")
    if not zoo.architectures():
        pytest.skip("torchvision/timm not installed: .venv/bin/pip install --no-deps -r benchmarks/requirements-zoo.txt")
    if name not in zoo.architectures():
        pytest.skip(f"{name} is not offered by the installed torchvision/timm")
    torch.manual_seed(0)
    model = zoo.build(name, {"img_size": 32} if name.startswith("timm/vit") else {}).eval()
    x = torch.randn(1, 3, 32, 32)
    cfg = PruneConfig(budget="ratio", ratio=0.3)
    setup = Setup("l2", 8, protected_layers(model, x, cfg), True, 0.75)
    pruned, rec = prune_to_budget(model, x, cfg, setup)
    assert models.count_macs(pruned, x) < 0.9 * models.count_macs(model, x)
    assert export_onnx(pruned, x, tmp_path / "m.onnx")["max_abs_diff_vs_torch"] < 1e-3
    if name == "tv/shufflenet_v2_x0_5":
        assert rec["excluded_groups"] and all("branch" in g["root"] or "conv" in g["root"] for g in rec["excluded_groups"])
