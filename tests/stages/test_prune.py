"""prune: structured pruning of real architecture families (built here in plain torch), budgets,
criteria, and clear errors for models the pruner cannot handle."""
from __future__ import annotations

import pytest
import numpy as np
import torch
from torch import nn

from pipeline import models
from pipeline.backends.onnxruntime import export_onnx
from pipeline.config import PruneConfig, RunConfig, load_target
from pipeline.data import resolve_data
from pipeline.errors import UserError
from pipeline.runner import Context, read_json, run_stage
from pipeline.stages.load import LoadStage
from pipeline.compress.prune import (KDSettings, Setup, layer_channels, prune_once, prune_to_budget,
                                     protected_layers)
from pipeline.stages.prune import PruneStage

X = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def cbr(c_in: int, c_out: int, k: int = 3, s: int = 1, g: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class Head(nn.Module):
    def __init__(self, c: int, classes: int = 10):
        super().__init__()
        self.fc = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean((2, 3)))


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c: int, s: int):
        super().__init__()
        self.a, self.b = cbr(c_in, c, s=s), nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))
        self.short = nn.Sequential(nn.Conv2d(c_in, c, 1, s, bias=False), nn.BatchNorm2d(c)) if s != 1 or c_in != c else nn.Identity()

    def forward(self, x):
        return torch.relu(self.b(self.a(x)) + self.short(x))


def resnet() -> nn.Module:
    return nn.Sequential(cbr(3, 16, s=2), ResBlock(16, 16, 1), ResBlock(16, 32, 2), ResBlock(32, 64, 2), Head(64))


class DenseLayer(nn.Module):
    def __init__(self, c_in: int, growth: int):
        super().__init__()
        self.f = nn.Sequential(cbr(c_in, 2 * growth, 1), cbr(2 * growth, growth))

    def forward(self, x):
        return torch.cat([x, self.f(x)], 1)


def densenet() -> nn.Module:
    return nn.Sequential(cbr(3, 16, s=2), DenseLayer(16, 8), DenseLayer(24, 8), cbr(32, 32, 1), nn.AvgPool2d(2),
                         DenseLayer(32, 8), DenseLayer(40, 8), Head(48))


class SE(nn.Module):
    def __init__(self, c: int, r: int = 4):
        super().__init__()
        self.down, self.up = nn.Conv2d(c, c // r, 1), nn.Conv2d(c // r, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.up(torch.relu(self.down(x.mean((2, 3), keepdim=True)))))


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, s: int, expand: int = 4):
        super().__init__()
        h = c_in * expand
        self.f = nn.Sequential(cbr(c_in, h, 1), cbr(h, h, 3, s, g=h), SE(h),
                               nn.Conv2d(h, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        self.res = s == 1 and c_in == c_out

    def forward(self, x):
        return x + self.f(x) if self.res else self.f(x)


def mobilenet() -> nn.Module:
    return nn.Sequential(cbr(3, 32, s=2), InvertedResidual(32, 32, 1, 3), InvertedResidual(32, 48, 2, 3),
                         InvertedResidual(48, 48, 1, 3), cbr(48, 64, 1), Head(64))


class XBlock(nn.Module):
    """ResNeXt (groups=8) or RegNet-style (fixed group width) bottleneck."""

    def __init__(self, c_in: int, c: int, s: int, groups: int):
        super().__init__()
        self.f = nn.Sequential(cbr(c_in, c, 1), cbr(c, c, 3, s, g=groups), nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c))
        self.short = nn.Sequential(nn.Conv2d(c_in, c, 1, s, bias=False), nn.BatchNorm2d(c)) if s != 1 or c_in != c else nn.Identity()

    def forward(self, x):
        return torch.relu(self.f(x) + self.short(x))


def resnext() -> nn.Module:
    return nn.Sequential(cbr(3, 32, s=2), XBlock(32, 64, 1, 8), XBlock(64, 128, 2, 8), Head(128))


def regnet() -> nn.Module:
    # group width 16: groups = channels / 16
    return nn.Sequential(cbr(3, 32, s=2), XBlock(32, 48, 2, 3), XBlock(48, 96, 2, 6), Head(96))


class ConvNeXtBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.pw1, self.pw2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)

    def forward(self, x):
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        return x + self.pw2(nn.functional.gelu(self.pw1(y))).permute(0, 3, 1, 2)


def convnext() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 32, 4, 4), nn.GroupNorm(1, 32), ConvNeXtBlock(32), ConvNeXtBlock(32), Head(32))


class Attention(nn.Module):
    """timm-style attention: one qkv Linear, `num_heads` and `head_dim` attributes."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.num_heads, self.head_dim, self.scale = heads, d // heads, (d // heads) ** -0.5
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        a = ((q @ k.transpose(-2, -1)) * self.scale).softmax(-1)
        return self.proj((a @ v).transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))


class ViTBlock(nn.Module):
    def __init__(self, d: int, heads: int, torch_mha: bool):
        super().__init__()
        self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.torch_mha = torch_mha
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True) if torch_mha else Attention(d, heads)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x):
        y = self.n1(x)
        x = x + (self.attn(y, y, y, need_weights=False)[0] if self.torch_mha else self.attn(y))
        return x + self.mlp(self.n2(x))


class ViT(nn.Module):
    def __init__(self, d: int = 64, heads: int = 4, torch_mha: bool = False):
        super().__init__()
        self.patch = nn.Conv2d(3, d, 8, 8)
        self.blocks = nn.Sequential(ViTBlock(d, heads, torch_mha), ViTBlock(d, heads, torch_mha))
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, 10)

    def forward(self, x):
        x = self.blocks(self.patch(x).flatten(2).transpose(1, 2))
        return self.head(self.norm(x).mean(1))


FAMILIES = {"resnet": resnet, "densenet": densenet, "mobilenet_se": mobilenet, "resnext": resnext,
            "regnet": regnet, "convnext_ln": convnext, "vit_qkv": ViT}


def setup_for(model: nn.Module, criterion: str = "l2", round_to: int = 1, **cfg) -> Setup:
    ignored = protected_layers(model, X, PruneConfig(**cfg))
    calib = [(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))]
    return Setup(criterion, round_to, ignored, calibration=calib)


def assert_sound(original: nn.Module, pruned: nn.Module, tmp_path) -> None:
    """Forward works, output shape unchanged, ONNX export runs in ORT and matches torch."""
    with torch.no_grad():
        assert pruned(X).shape == original(X).shape
    meta = export_onnx(pruned, X, tmp_path / "pruned.onnx")
    assert meta["max_abs_diff_vs_torch"] < 1e-3


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_meets_macs_budget(family, tmp_path):
    torch.manual_seed(0)
    model = FAMILIES[family]().eval()
    base = models.count_macs(model, X)
    pruned, rec = prune_to_budget(model, X, PruneConfig(macs_reduction=0.4), setup_for(model))
    assert rec["met"], rec["steps"][-1]["search"]
    assert abs(models.count_macs(pruned, X) / base - 0.6) <= 0.02
    assert_sound(model, pruned, tmp_path)
    before, after = layer_channels(model), layer_channels(pruned)
    assert after[protected_layers(model, X, PruneConfig())[0]] == before[protected_layers(model, X, PruneConfig())[0]]
    assert any(after[n] < before[n] for n in before)


def test_torch_multihead_attention(tmp_path):
    torch.manual_seed(0)
    model = ViT(torch_mha=True).eval()
    pruned = prune_once(model, X, 0.3, setup_for(model))
    attn = pruned.blocks[0].attn
    assert attn.embed_dim < 64 and attn.embed_dim % 4 == 0 and attn.num_heads == 4
    # the eval fast path (aten::_native_multi_head_attention) has no ONNX export: use the plain ops
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        assert_sound(model, pruned, tmp_path)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def test_classifier_and_stem_kept_and_ignore_respected():
    model = resnet().eval()
    setup = setup_for(model, ignore_stem=True, ignore=["2.a.0"])
    assert setup.ignored == ["0.0", "2.a.0", "4.fc"]
    pruned = prune_once(model, X, 0.5, setup)
    ch = layer_channels(pruned)
    assert ch["0.0"] == 16 and ch["2.a.0"] == 32 and ch["4.fc"] == 10 and ch["3.a.0"] == 32


@pytest.mark.parametrize("criterion", ["l1", "l2", "bn_scale", "taylor", "lamp"])
def test_each_criterion_removes_the_weak_channels(criterion, tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(cbr(3, 16), cbr(16, 16), Head(16)).eval()
    with torch.no_grad():  # channels 0..7 of the first layer: tiny weights, BN scales and fan-out
        model[0][0].weight[:8] *= 1e-3
        model[0][1].weight[:8] = 1e-3
        model[0][1].weight[8:].uniform_(0.5, 1.0)
        model[1][0].weight[:, :8] *= 1e-3
    pruned = prune_once(model, X, 0.5, setup_for(model, criterion))
    assert_sound(model, pruned, tmp_path)
    assert pruned[0][1].weight.shape == (8,) and bool((pruned[0][1].weight >= 0.5).all())


def test_taylor_uses_gradients():
    torch.manual_seed(0)
    model = resnet().eval()
    a = prune_once(model, X, 0.5, setup_for(model, "taylor"))
    s = setup_for(model, "taylor")
    s.calibration = [(torch.randn(8, 3, 32, 32) * 3, torch.randint(0, 10, (8,)))]
    b = prune_once(model, X, 0.5, s)
    assert not torch.equal(a[3].b[0].weight, b[3].b[0].weight)


def test_bn_scale_without_batchnorm_is_a_user_error():
    model = ViT().eval()
    with pytest.raises(UserError, match="no BatchNorm"):
        prune_to_budget(model, X, PruneConfig(criterion="bn_scale"), setup_for(model, "bn_scale"))


def test_params_budget_and_ratio_budget(tmp_path):
    model = mobilenet().eval()
    base = models.count_params(model)
    pruned, rec = prune_to_budget(model, X, PruneConfig(budget="params", params_reduction=0.5), setup_for(model))
    assert rec["met"] and abs(models.count_params(pruned) / base - 0.5) <= 0.02
    by_ratio, _ = prune_to_budget(model, X, PruneConfig(budget="ratio", ratio=0.25), setup_for(model))
    assert layer_channels(by_ratio)["1.f.0.0"] == 72  # 96 * 0.75


def test_global_allocation_with_layer_cap():
    model = resnext().eval()
    s = setup_for(model)
    s.global_pruning, s.max_layer_ratio = True, 0.6
    pruned, rec = prune_to_budget(model, X, PruneConfig(macs_reduction=0.5, global_pruning=True), s)
    before, after = layer_channels(model), layer_channels(pruned)
    assert rec["met"] and all(after[n] >= 0.4 * before[n] - 1 for n in before)


def test_iterative_steps_with_kd():
    torch.manual_seed(0)
    model = resnet().eval()
    kd = KDSettings([(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))) for _ in range(3)])
    pruned, rec = prune_to_budget(model, X, PruneConfig(budget="ratio", ratio=0.75, iterative_steps=2),
                                  setup_for(model), kd=kd)
    assert [s["step"] for s in rec["steps"]] == [1, 2] and len(rec["steps"][0]["kd_losses"]) == 3
    assert rec["steps"][0]["macs"] > rec["steps"][1]["macs"]
    assert layer_channels(pruned)["3.a.0"] == 16  # 64 * 0.5 * 0.5
    assert not torch.equal(pruned[3].b[0].weight, prune_once(model, X, 0.75, setup_for(model))[3].b[0].weight)


def test_latency_budget_iterates_and_records():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 64)
    model = nn.Sequential(cbr(3, 64), cbr(64, 128), cbr(128, 128), Head(128)).eval()
    setup = Setup("l2", 8, protected_layers(model, x, PruneConfig()))

    def cost(m: nn.Module) -> dict:
        """A fixed cost function (1 ms per 10M MACs): the search is tested without timing noise."""
        return {"p50_ms": models.count_macs(m, x) / 1e7, "runs": 10}

    base = cost(model)["p50_ms"]
    # a goal the unpruned model meets: measured once, nothing pruned
    same, probe = prune_to_budget(model, x, PruneConfig(budget="latency", latency_ms=base * 1.01), setup, latency=cost)
    assert layer_channels(same) == layer_channels(model) and probe["latency_before"]["p50_ms"] == base
    goal = 0.5 * base
    pruned, rec = prune_to_budget(model, x, PruneConfig(budget="latency", latency_ms=goal), setup, latency=cost)
    trials = rec["steps"][0]["search"]
    assert trials and all(t["latency_measurement"]["runs"] == 10 for t in trials)
    assert rec["latency_goal_ms"] == goal and rec["met"]
    # the shipped candidate is the least-pruned (slowest) one measured at or under the goal
    under = [t["latency"] for t in trials if t["latency"] <= goal]
    assert rec["latency_after"]["p50_ms"] == pytest.approx(max(under))
    # and the real default cost (ONNX Runtime on this host) runs and is recorded
    _, real = prune_to_budget(model, x, PruneConfig(budget="latency", latency_ms=1e9, latency_runs=5), setup)
    assert real["latency_before"]["p50_ms"] > 0 and real["latency_before"]["runs"] == 5


def test_latency_budget_needs_a_goal():
    with pytest.raises(UserError, match="latency_ms"):
        prune_to_budget(resnet().eval(), X, PruneConfig(budget="latency"), setup_for(resnet()))


class HardCodedMask(nn.Module):
    """Multiplies by a fixed-size buffer after `conv`: torch-pruning cannot shrink the buffer."""

    def __init__(self):
        super().__init__()
        self.stem, self.conv = cbr(3, 16), nn.Conv2d(16, 16, 3, padding=1)
        self.register_buffer("mask", torch.ones(1, 16, 1, 1))
        self.head = Head(16)

    def forward(self, x):
        return self.head(self.conv(self.stem(x)) * self.mask)


def test_unprunable_layer_is_named():
    model = HardCodedMask().eval()
    with pytest.raises(UserError) as e:
        prune_once(model, X, 0.5, setup_for(model))
    assert "'conv'" in e.value.problem and "prune.ignore" in e.value.fix
    pruned = prune_once(model, X, 0.5, setup_for(model, ignore=["conv"]))
    assert pruned(X).shape == (1, 10)


class ShuffleBy3(nn.Module):
    """Its forward needs conv b's channel count divisible by 3: 48 -> 24 (ratio 0.5, the probe) works,
    32 (ratio 0.3 with round_to 8) breaks it, so only the search meets the failure."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 48, 3, padding=1), nn.Conv2d(48, 48, 1)
        self.c, self.d, self.fc = nn.Conv2d(48, 32, 1), nn.Conv2d(32, 32, 3, padding=1), nn.Linear(32, 10)

    def forward(self, x):
        y = self.b(self.a(x))
        n, c, h, w = y.shape
        y = y.reshape(n * 3, c // 3, h, w).relu().reshape(n, c, h, w)
        return self.fc(self.d(self.c(y)).mean((2, 3)))


def test_group_failing_only_at_a_search_ratio_is_excluded_not_fatal():
    model = ShuffleBy3().eval()
    setup = Setup("l2", 8, ["fc"])
    prune_once(model, X, 0.5, setup)                     # the probe ratio passes
    with pytest.raises(UserError, match="fails at layer 'b'"):
        prune_once(model, X, 0.3, setup)
    pruned, rec = prune_to_budget(model, X, PruneConfig(budget="ratio", ratio=0.3), setup)
    assert [g["root"] for g in rec["excluded_groups"]] == ["b"]
    assert rec["excluded_groups"][0]["reason"].startswith("at pruning ratio 0.300: the pruned model fails at layer 'b'")
    ch = layer_channels(pruned)
    assert ch["b"] == 48 and ch["a"] < 48 and ch["c"] < 32 and pruned(X).shape == (1, 10)   # only b's group whole


@pytest.fixture
def fmnist_ctx(tmp_path, small_npz):
    cfg = RunConfig(data=str(small_npz))
    cfg.evaluate.test_limit, cfg.load.latency_runs = 200, 5
    return Context(tmp_path, cfg, [load_target("jetson")], lambda: resolve_data(cfg.data))


def test_stage_default_model(fmnist_ctx):
    run_stage(LoadStage(), fmnist_ctx)
    rec = run_stage(PruneStage(), fmnist_ctx)["metrics"]
    assert abs(rec["macs_fraction"] - 0.5) <= 0.02 and rec["ignored_layers"] == ["fc"]
    assert rec["channels"]["fc"] == [10, 10] and rec["onnx_max_abs_diff"] < 1e-3
    assert all(a % 16 == 0 for n, (b, a) in rec["channels"].items() if n != "fc")
    reloaded = torch.export.load(str(fmnist_ctx.run_dir / "prune" / "model.pt2")).module()
    x = torch.from_numpy(np.asarray(fmnist_ctx.data.normalize(fmnist_ctx.data.x_test[:1])))
    assert reloaded(x).shape == (1, 10)
    assert read_json(fmnist_ctx.run_dir / "prune" / "stage.json")["metrics"]["search"]["budget"] == "macs"
    assert rec["round_to"] == 16
