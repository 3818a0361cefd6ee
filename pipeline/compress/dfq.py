"""Depthwise-safe post-training quantization: transforms of the float torch model that the quantize
stage applies before a backend quantizes it (`quantize.equalize`, `quantize.bias_correction`).

- BatchNorm folding (torch.fx), so that what is equalized and corrected is what gets quantized.
- Cross-layer equalization (Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias
  Correction", ICCV 2019): for a layer pair A -> act -> B where `act` is positively homogeneous
  (ReLU, LeakyReLU, PReLU, identity), output channel c of A is divided by s_c and the matching input
  channel of B multiplied by s_c, with s_c = sqrt(r_A,c / r_B,c) (r = the channel's max |weight|). The
  float function is unchanged; both ranges become sqrt(r_A r_B), so one per-tensor scale no longer
  rounds the small channels of a depthwise layer to zero.
- Empirical bias correction (same paper, section 4.2, measured rather than analytic): layer by layer in
  graph order, the per-channel mean output of the model with INT8-rounded weights (this and earlier
  layers, earlier ones already corrected) is compared with the float model's on the calibration set,
  and the difference is added to the layer's bias. Only the weights' rounding is simulated (symmetric
  int8, -127..127, per channel or per tensor as the backend will quantize); the backend then quantizes
  the same float weights the same way, so the corrected bias offsets the shift their rounding causes.

Works on models torch.fx can trace; other models get one clear error.
"""
from __future__ import annotations

import copy
import math
from typing import Iterable

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from pipeline.errors import UserError

LAYERS = (nn.Conv2d, nn.Linear)
HOMOGENEOUS_MODULES = (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.Identity, nn.Dropout)
HOMOGENEOUS_FUNCTIONS = {F.relu, torch.relu, F.leaky_relu, F.dropout}
HOMOGENEOUS_METHODS = {"relu", "relu_"}


def fold_batchnorm(model: nn.Module) -> torch.fx.GraphModule:
    """A traced copy of `model` (eval mode) with every Conv/Linear -> BatchNorm pair folded."""
    from torch.fx.experimental.optimization import fuse

    try:
        return fuse(copy.deepcopy(model).eval(), inplace=True)   # fuse would deep-copy it once more
    except Exception as e:  # noqa: BLE001 -- tracing fails in many ways, all with the same fix
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise UserError(f"quantize.equalize / quantize.bias_correction need a model torch.fx can trace: "
                        f"{type(e).__name__}: {first}",
                        "turn both off, or remove data-dependent control flow from the model's forward") from None


def _layer(node: torch.fx.Node, modules: dict[str, nn.Module]) -> nn.Module | None:
    if node.op == "call_module" and isinstance(modules.get(node.target), LAYERS):
        return modules[node.target]
    return None


def _homogeneous(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(node.target), HOMOGENEOUS_MODULES)
    if node.op == "call_function":
        return node.target in HOMOGENEOUS_FUNCTIONS
    return node.op == "call_method" and node.target in HOMOGENEOUS_METHODS


def _only_user(node: torch.fx.Node) -> torch.fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def equalization_pairs(gm: torch.fx.GraphModule) -> list[tuple[str, str]]:
    """(A, B) module names where A's output reaches only B, through positively homogeneous ops only."""
    modules = dict(gm.named_modules())
    pairs = []
    for node in gm.graph.nodes:
        a = _layer(node, modules)
        if a is None:
            continue
        nxt = _only_user(node)
        while nxt is not None and _homogeneous(nxt, modules):
            nxt = _only_user(nxt)
        b = _layer(nxt, modules) if nxt is not None else None
        if b is None:
            continue
        a_out = a.out_channels if isinstance(a, nn.Conv2d) else a.out_features
        b_in = b.in_channels if isinstance(b, nn.Conv2d) else b.in_features
        if a_out == b_in and type(a) is type(b):
            pairs.append((node.target, nxt.target))
    return pairs


def _out_range(m: nn.Module) -> torch.Tensor:
    w = m.weight.detach()
    return w.abs().reshape(w.shape[0], -1).amax(1)


def _input_channel_scale(m: nn.Module, s: torch.Tensor) -> torch.Tensor:
    """`s` (one value per input channel of `m`) laid out like m.weight: grouped convs see in_channels /
    groups inputs per output, so output o of group g scales by s[g * per_in + i] at its input i."""
    w = m.weight
    groups = m.groups if isinstance(m, nn.Conv2d) else 1
    per_in = w.shape[1]
    layout = s.reshape(groups, 1, per_in).expand(groups, w.shape[0] // groups, per_in).reshape(w.shape[0], per_in)
    return layout.reshape(*layout.shape, *[1] * (w.dim() - 2))


def _in_range(m: nn.Module) -> torch.Tensor:
    """Per input channel of `m`, the max |weight| over the outputs that read it."""
    w = m.weight.detach().abs()
    groups = m.groups if isinstance(m, nn.Conv2d) else 1
    per_in = w.shape[1]
    return w.reshape(groups, w.shape[0] // groups, per_in, -1).amax(dim=(1, 3)).reshape(groups * per_in)


@torch.no_grad()
def equalize(gm: torch.fx.GraphModule, iterations: int = 20) -> dict:
    """Cross-layer equalization of every pair in `gm`, in place. Returns what was done."""
    pairs = equalization_pairs(gm)
    before = {n: _spread(gm.get_submodule(n)) for n in dict.fromkeys(n for pair in pairs for n in pair)}
    for _ in range(iterations):
        moved = 0.0
        for a_name, b_name in pairs:
            a, b = gm.get_submodule(a_name), gm.get_submodule(b_name)
            r1, r2 = _out_range(a), _in_range(b)
            ok = (r1 > 0) & (r2 > 0)
            s = torch.where(ok, torch.sqrt(r1 / torch.where(ok, r2, 1.0)), torch.ones_like(r1))
            a.weight.div_(s.reshape(-1, *[1] * (a.weight.dim() - 1)))
            if a.bias is not None:
                a.bias.div_(s)
            b.weight.mul_(_input_channel_scale(b, s))
            moved = max(moved, float((s.log().abs()).max()))
        if moved < 1e-3:
            break
    after = {n: _spread(gm.get_submodule(n)) for n in before}
    return {"pairs": [list(p) for p in pairs],
            "channel_range_spread": {n: {"before": round(before[n], 2), "after": round(after[n], 2)} for n in before},
            "note": "spread = max/min of the per-output-channel max |weight| (1 is flat); exact in float"}


def _spread(m: nn.Module) -> float:
    r = _out_range(m)
    r = r[r > 0]
    return float(r.max() / r.min()) if len(r) else 1.0


def fake_quant_weight(w: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """Symmetric INT8 rounding of a weight (-127..127), per output channel or per tensor."""
    amax = w.abs().reshape(w.shape[0], -1).amax(1) if per_channel else w.abs().max().reshape(1)
    scale = (amax / 127).clamp(min=1e-12).reshape(-1, *[1] * (w.dim() - 1))
    return (w / scale).round().clamp(-127, 127) * scale


@torch.no_grad()
def _channel_means(model: nn.Module, names: Iterable[str], calib: torch.Tensor, batch: int) -> dict[str, torch.Tensor]:
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name: str, conv: bool):
        def record(_m, _i, out: torch.Tensor) -> None:
            x = out.transpose(0, 1).reshape(out.shape[1], -1) if conv else out.reshape(-1, out.shape[-1]).t()
            sums[name] = sums.get(name, 0) + x.double().sum(1)
            counts[name] = counts.get(name, 0) + x.shape[1]
        return record

    handles = [model.get_submodule(n).register_forward_hook(hook(n, isinstance(model.get_submodule(n), nn.Conv2d)))
               for n in names]
    try:
        for i in range(0, len(calib), batch):
            model(calib[i:i + batch])
    finally:
        for h in handles:
            h.remove()
    return {n: (sums[n] / counts[n]).float() for n in sums}


@torch.no_grad()
def bias_correction(gm: torch.fx.GraphModule, calib: torch.Tensor, per_channel: bool, batch: int = 128) -> dict:
    """Empirical bias correction of every Conv2d/Linear of `gm`, in place, on `calib` (normalized NCHW)."""
    modules = dict(gm.named_modules())
    names = [n.target for n in gm.graph.nodes if _layer(n, modules) is not None]
    reference = _channel_means(gm, names, calib, batch)
    rounded = copy.deepcopy(gm)
    shifts = {}
    for name in names:
        if name not in reference:      # never ran on this input (dead branch)
            continue
        q = rounded.get_submodule(name)
        q.weight.copy_(fake_quant_weight(q.weight, per_channel))
        shift = reference[name] - _channel_means(rounded, [name], calib, batch)[name]
        for m in (q, gm.get_submodule(name)):
            if m.bias is None:
                m.bias = nn.Parameter(torch.zeros(shift.shape[0], dtype=m.weight.dtype))
            m.bias.add_(shift)
        shifts[name] = shift
    return {"layers": len(shifts), "samples": int(len(calib)),
            "weights_simulated": "int8 symmetric " + ("per-channel" if per_channel else "per-tensor"),
            "max_abs_shift": {n: round(float(s.abs().max()), 5) for n, s in shifts.items()}}


def prepare(model: nn.Module, calib: torch.Tensor, equalize_layers: bool, correct_bias: bool,
            per_channel: bool) -> tuple[nn.Module, dict]:
    """The float model a backend should quantize, and a record of what was done to it."""
    gm = fold_batchnorm(model)
    info: dict = {"batchnorm_folded": True}
    if equalize_layers:
        info["equalize"] = equalize(gm)
    if correct_bias:
        info["bias_correction"] = bias_correction(gm, calib, per_channel)
    with torch.no_grad():
        x = calib[: min(len(calib), 64)]
        diff = (model.eval()(x) - gm(x)).abs().max()
    info["float_max_abs_diff"] = float(diff) if math.isfinite(float(diff)) else None
    return gm.eval(), info
