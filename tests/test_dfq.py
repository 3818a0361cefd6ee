"""pipeline/dfq.py: BatchNorm folding, cross-layer equalization and bias correction on torch models."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.compress import dfq
from pipeline.errors import UserError


def skewed_model() -> nn.Module:
    """Conv -> ReLU -> depthwise -> LeakyReLU -> grouped conv -> ReLU -> pool -> linear -> ReLU -> linear, with
    BatchNorm scales spread over three orders of magnitude (what training does to depthwise layers)."""
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.LeakyReLU(0.1),
        nn.Conv2d(8, 12, 1, groups=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 5))
    with torch.no_grad():
        for bn in (m[1], m[4]):
            bn.weight.copy_(torch.logspace(-2, 1, 8)[torch.randperm(8)])
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.bias.uniform_(0, 1)
    return m.eval()


def test_equalize_keeps_the_float_function_and_flattens_channel_ranges():
    model, x = skewed_model(), torch.randn(16, 3, 12, 12)
    gm = dfq.fold_batchnorm(model)
    assert not any(isinstance(mod, nn.BatchNorm2d) for n, mod in gm.named_modules()
                   if any(node.target == n for node in gm.graph.nodes))
    pairs = dfq.equalization_pairs(gm)
    assert pairs == [("0", "3"), ("3", "6"), ("10", "12")]   # through ReLU, LeakyReLU; not across the pool
    info = dfq.equalize(gm)
    with torch.no_grad():
        assert torch.allclose(gm(x), model(x), rtol=1e-4, atol=1e-4)
    spread = info["channel_range_spread"]["3"]
    assert spread["before"] > 50 and spread["after"] < spread["before"] / 10


def test_equalize_leaves_non_homogeneous_activations_alone():
    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU6(), nn.Conv2d(4, 4, 3), nn.SiLU(), nn.Conv2d(4, 2, 1)).eval()
    assert dfq.equalization_pairs(dfq.fold_batchnorm(m)) == []


def test_bias_correction_removes_the_mean_shift_of_rounded_weights():
    model = skewed_model()
    calib = torch.randn(64, 3, 12, 12)
    gm = dfq.fold_batchnorm(model)

    def shift(g: torch.fx.GraphModule) -> float:
        rounded = dfq.fold_batchnorm(g)
        with torch.no_grad():
            for mod in rounded.modules():
                if isinstance(mod, dfq.LAYERS):
                    mod.weight.copy_(dfq.fake_quant_weight(mod.weight, per_channel=False))
            return float((rounded(calib).mean(0) - model(calib).mean(0)).abs().max())

    before = shift(gm)
    info = dfq.bias_correction(gm, calib, per_channel=False)
    assert info["layers"] == 5 and info["weights_simulated"] == "int8 symmetric per-tensor"
    assert shift(gm) < before / 5


def test_fake_quant_weight_is_symmetric_int8():
    w = torch.tensor([[1.0, -0.5, 0.01], [100.0, 3.0, -2.0]])
    per_tensor = dfq.fake_quant_weight(w, per_channel=False)
    assert torch.allclose(per_tensor[1, 0], torch.tensor(100.0)) and per_tensor[0, 2] == 0   # rounded away
    per_channel = dfq.fake_quant_weight(w, per_channel=True)
    assert torch.allclose(per_channel[0], w[0], atol=1 / 127 / 2 + 1e-6)
    steps = per_channel[1] / (100 / 127)
    assert torch.allclose(steps, steps.round(), atol=1e-4)


def test_untraceable_model_is_one_clear_error():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)

        def forward(self, x):
            return self.conv(x) if x.sum() > 0 else -self.conv(x)

    with pytest.raises(UserError) as e:
        dfq.prepare(Branchy(), torch.randn(4, 1, 8, 8), True, True, per_channel=True)
    assert "torch.fx" in str(e.value) and "turn both off" in e.value.fix
