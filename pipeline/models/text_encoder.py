"""A small BERT-style text encoder in plain PyTorch: the bundled default text-classification model.

    text_encoder(vocab_size=8000, hidden=256, layers=4, heads=4, ffn=1024, max_len=128, num_classes=2)

`forward(input_ids, attention_mask)` takes int64 (N, L) tensors (L <= max_len; mask 1 = token,
0 = padding) and returns (N, num_classes) logits. Token + learned position embeddings, LayerNorm,
post-LN encoder blocks (as in BERT) with separate q/k/v/out `nn.Linear` per attention module (each has
an integer `num_heads`, so head pruning can find it), a GELU FFN, and the [CLS] (position 0) hidden
state through a tanh pooler into the classifier `nn.Linear`.

Export-friendly on purpose: attention is explicit matmul + softmax with the padding mask added as a
large negative bias (no fused SDPA, no boolean indexing), shapes come from the inputs, so torch.export /
ONNX (dynamic batch and sequence axes) and litert-torch see only plain ops.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

MASK_BIAS = -1e4  # added to attention scores of padding keys; finite, so fp16 / INT8 paths stay finite


class SelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float = 0.1):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden {hidden} is not divisible by heads {heads}")
        self.num_heads = int(heads)
        self.head_dim = hidden // heads
        self.q = nn.Linear(hidden, hidden)
        self.k = nn.Linear(hidden, hidden)
        self.v = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        n, length, _ = x.shape
        # head count from the q projection, so a head-pruned module (fewer q/k/v outputs) still runs
        inner = self.q.out_features
        heads = inner // self.head_dim

        def split(t: torch.Tensor) -> torch.Tensor:  # (N, L, H*D) -> (N, H, L, D)
            return t.reshape(n, length, heads, self.head_dim).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(self.head_dim)) + bias
        probs = self.dropout(torch.softmax(scores, dim=-1))
        ctx = torch.matmul(probs, v).transpose(1, 2).reshape(n, length, inner)
        return self.out(ctx)


class EncoderLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, ffn: int, dropout: float = 0.1):
        super().__init__()
        self.attn = SelfAttention(hidden, heads, dropout)
        self.ln1 = nn.LayerNorm(hidden, eps=1e-12)
        self.fc1 = nn.Linear(hidden, ffn)
        self.fc2 = nn.Linear(ffn, hidden)
        self.ln2 = nn.LayerNorm(hidden, eps=1e-12)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = self.ln1(x + self.dropout(self.attn(x, bias)))
        return self.ln2(x + self.dropout(self.fc2(F.gelu(self.fc1(x)))))


class TextEncoder(nn.Module):
    def __init__(self, vocab_size: int, hidden: int, layers: int, heads: int, ffn: int, max_len: int,
                 num_classes: int, dropout: float = 0.1, pad_id: int = 0):
        super().__init__()
        self.max_len = max_len
        self.tok_emb = nn.Embedding(vocab_size, hidden, padding_idx=pad_id)
        self.pos_emb = nn.Embedding(max_len, hidden)
        self.emb_ln = nn.LayerNorm(hidden, eps=1e-12)
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(EncoderLayer(hidden, heads, ffn, dropout) for _ in range(layers))
        self.pooler = nn.Linear(hidden, hidden)
        self.classifier = nn.Linear(hidden, num_classes)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:  # BERT's: N(0, 0.02) weights, zero biases, padding row zero
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
            if isinstance(m, nn.Embedding) and m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(N, L, hidden) final hidden states."""
        length = input_ids.shape[1]
        pos = torch.arange(length, device=input_ids.device)
        x = self.dropout(self.emb_ln(self.tok_emb(input_ids) + self.pos_emb(pos)))
        # (N, 1, 1, L): 0 for tokens, MASK_BIAS for padding keys
        bias = ((1.0 - attention_mask.to(x.dtype)) * MASK_BIAS)[:, None, None, :]
        for layer in self.layers:
            x = layer(x, bias)
        return x

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.encode(input_ids, attention_mask)
        pooled = torch.tanh(self.pooler(h[:, 0]))
        return self.classifier(self.dropout(pooled))


def text_encoder(vocab_size: int = 8000, hidden: int = 256, layers: int = 4, heads: int = 4, ffn: int = 1024,
                 max_len: int = 128, num_classes: int = 2, dropout: float = 0.1) -> TextEncoder:
    """A BERT-style encoder classifier; see the module docstring. Defaults: 4 x 256, 4 heads, FFN 1024."""
    return TextEncoder(vocab_size, hidden, layers, heads, ffn, max_len, num_classes, dropout)


def macs(model: TextEncoder, seq_len: int) -> int:
    """Multiply-accumulates of one sequence of `seq_len` tokens: every Linear plus the two attention
    matmuls (embedding lookups, LayerNorm, softmax and GELU are not counted)."""
    total = 0
    for layer in model.layers:
        a = layer.attn
        total += seq_len * sum(lin.in_features * lin.out_features for lin in (a.q, a.k, a.v, a.out))
        total += 2 * seq_len * seq_len * a.q.out_features  # QK^T and PV
        total += seq_len * (layer.fc1.in_features * layer.fc1.out_features + layer.fc2.in_features * layer.fc2.out_features)
    total += model.pooler.in_features * model.pooler.out_features
    total += model.classifier.in_features * model.classifier.out_features
    return total
