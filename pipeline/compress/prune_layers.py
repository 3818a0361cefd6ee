"""Layers the pruner must treat specially: attention (prune head by head, then fix the per-head width
attributes) and recurrent layers (left unpruned, with everything coupled to them)."""
from __future__ import annotations

import math
from typing import Optional

from torch import nn

from pipeline import models


QKV_NAMES = (("q", "k", "v"), ("query", "key", "value"), ("q_proj", "k_proj", "v_proj"))


def _heads(m: nn.Module) -> Optional[int]:
    h = getattr(m, "num_heads", getattr(m, "num_attention_heads", None))
    return h if isinstance(h, int) and not isinstance(h, bool) else None


def _qkv(m: nn.Module) -> list[nn.Linear]:
    """The query/key/value projections of an attention module (one fused `qkv`, or three separate)."""
    if isinstance(getattr(m, "qkv", None), nn.Linear):
        return [m.qkv]
    for names in QKV_NAMES:
        layers = [getattr(m, n, None) for n in names]
        if all(isinstance(x, nn.Linear) for x in layers):
            return layers
    return []


def attention_heads(model: nn.Module) -> dict[nn.Module, int]:
    """The query/key/value Linears of attention modules that carry an integer head count (`num_heads`, or
    `num_attention_heads` as in Hugging Face BERT): torch-pruning prunes them head by head (the width per
    head shrinks, the head count stays). nn.MultiheadAttention is left out: torch-pruning's own pruner for
    it shrinks the embedding only when it is not declared here (see `attention_round_to`)."""
    return {lin: _heads(m) for m in model.modules() if _heads(m) and not isinstance(m, nn.MultiheadAttention)
            for lin in _qkv(m)}


def attention_round_to(model: nn.Module, round_to: int) -> int:
    """round_to made a multiple of every nn.MultiheadAttention's head count, so pruned embeddings split
    into whole heads."""
    for m in model.modules():
        if isinstance(m, nn.MultiheadAttention):
            round_to = math.lcm(round_to, m.num_heads)
    return round_to


def sync_attention(model: nn.Module) -> None:
    """After pruning, set the per-head width attributes of attention modules from their pruned projections
    (`head_dim`, timm >= 1.0.2x's `attn_dim`; Hugging Face's `attention_head_size` and `all_head_size`)."""
    for m in model.modules():
        heads, proj = _heads(m), _qkv(m)
        if not heads or not proj or isinstance(m, nn.MultiheadAttention):
            continue
        width = proj[0].out_features // (3 if len(proj) == 1 else 1)
        for attr, value in (("head_dim", width // heads), ("attention_head_size", width // heads),
                            ("all_head_size", width), ("attn_dim", width)):
            if isinstance(getattr(m, attr, None), int):
                setattr(m, attr, value)


def recurrent_coupled(model: nn.Module, example) -> tuple[list[str], list[str]]:
    """Recurrent layers (LSTM, GRU, RNN) and every layer whose channels are coupled to them: left unpruned.
    torch-pruning's recurrent pruner handles only some single-layer cases and fails or corrupts the rest, so
    they are skipped, and the rest of the model is pruned. Returns (recurrent layer names, coupled names)."""
    rnn = [n for n, m in model.named_modules() if isinstance(m, nn.RNNBase)]
    if not rnn:
        return [], []
    import torch_pruning as tp
    names = {m: n for n, m in model.named_modules()}
    rnn_mods = {model.get_submodule(n) for n in rnn}
    coupled: set[str] = set()
    try:
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=models.as_args(example))
        for group in dg.get_all_groups():
            mods = {dep.target.module for dep, _ in group}
            if mods & rnn_mods:
                coupled |= {names[m] for m in mods if m in names and isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))}
    except Exception:  # noqa: BLE001 -- no graph: leave every conv/linear that feeds or reads them as is
        coupled = {n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))}
    return rnn, sorted(coupled)
