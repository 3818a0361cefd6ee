"""Small models of the kinds users bring, with data made for the tests (tests/e2e/test_any_model.py).

Each `make_<kind>(path)` writes an .npz in the pipeline's data format whose targets the inputs
really determine (so a briefly trained teacher scores far above chance), and the factory of the same
name builds the model. Factories are imported by the pipeline as `tests/e2e/any_models.py:<name>`.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

N_TRAIN, N_TEST = 768, 256


def _split(rng, n):
    return n[:N_TRAIN], n[N_TRAIN:]


# ---------------------------------------------------------------- image + metadata vector
class TwoInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.meta = nn.Sequential(nn.Linear(4, 16), nn.ReLU())
        self.head = nn.Linear(48, 3)

    def forward(self, image, meta):
        return self.head(torch.cat([self.conv(image), self.meta(meta)], 1))


def two_input():
    return TwoInput()


def make_two_input(path, seed=0):
    rng = np.random.default_rng(seed)
    n = N_TRAIN + N_TEST
    y = rng.integers(0, 3, n)
    img = rng.integers(0, 60, (n, 1, 16, 16)).astype(np.uint8)
    for i, c in enumerate(y):           # class 0: bright top half, 1: bright bottom half, 2: by the metadata
        if c == 0:
            img[i, :, :8] += 150
        elif c == 1:
            img[i, :, 8:] += 150
    meta = rng.normal(0, 1, (n, 4)).astype(np.float32)
    meta[y == 2, 0] += 3.0
    np.savez(path, image_train=img[:N_TRAIN], meta_train=meta[:N_TRAIN], y_train=y[:N_TRAIN],
             image_test=img[N_TRAIN:], meta_test=meta[N_TRAIN:], y_test=y[N_TRAIN:], mean=[0.3], std=[0.3])


# ---------------------------------------------------------------- int64 token ids + mask, transformer encoder
class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x, bias):
        n, length, _ = x.shape

        def split(t):
            return t.reshape(n, length, self.num_heads, self.head_dim).transpose(1, 2)
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + bias, -1)
        return self.out((att @ v).transpose(1, 2).reshape(n, length, self.num_heads * self.head_dim))


class Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.attn, self.ln1, self.ln2 = Attention(dim, heads), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x, bias):
        x = self.ln1(x + self.attn(x, bias))
        return self.ln2(x + self.ffn(x))


class TinyEncoder(nn.Module):
    def __init__(self, vocab=64, dim=32, heads=2, length=16, classes=2):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, dim), nn.Embedding(length, dim)
        self.blocks = nn.ModuleList([Block(dim, heads), Block(dim, heads)])
        self.cls = nn.Linear(dim, classes)

    def forward(self, input_ids, attention_mask):
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.tok(input_ids) + self.pos(pos)[None]
        bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -1e4
        for b in self.blocks:
            x = b(x, bias)
        return self.cls(x[:, 0])


def tiny_encoder():
    return TinyEncoder()


def make_tokens(path, seed=0):
    """Label 1 when token 7 occurs in the unpadded part; right padding with 0 and a mask."""
    rng = np.random.default_rng(seed)
    n, length = N_TRAIN + N_TEST, 16
    ids = rng.integers(8, 64, (n, length)).astype(np.int64)
    lengths = rng.integers(6, length + 1, n)
    y = rng.integers(0, 2, n)
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int64)
    for i in np.flatnonzero(y):
        ids[i, rng.integers(1, lengths[i])] = 7
    ids[:, 0] = 1                                  # [CLS]
    ids[mask == 0] = 0
    np.savez(path, input_ids_train=ids[:N_TRAIN], attention_mask_train=mask[:N_TRAIN], y_train=y[:N_TRAIN],
             input_ids_test=ids[N_TRAIN:], attention_mask_test=mask[N_TRAIN:], y_test=y[N_TRAIN:])


# ---------------------------------------------------------------- 1-D conv on (N, C, T)
def conv1d():
    return nn.Sequential(nn.Conv1d(2, 16, 5, padding=2), nn.BatchNorm1d(16), nn.ReLU(),
                         nn.Conv1d(16, 32, 5, stride=2, padding=2), nn.BatchNorm1d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(32, 4))


def make_audio(path, seed=0):
    """Two-channel signals; the class is the frequency of a sine in channel 0."""
    rng = np.random.default_rng(seed)
    n, t = N_TRAIN + N_TEST, 64
    y = rng.integers(0, 4, n)
    time = np.arange(t) / t
    x = rng.normal(0, 0.3, (n, 2, t)).astype(np.float32)
    x[:, 0] += np.sin(2 * np.pi * (2 + 3 * y)[:, None] * time[None] + rng.uniform(0, 6, (n, 1))).astype(np.float32)
    np.savez(path, x_train=x[:N_TRAIN], y_train=y[:N_TRAIN], x_test=x[N_TRAIN:], y_test=y[N_TRAIN:])


# ---------------------------------------------------------------- tabular regression
def tabular():
    return nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))


def make_tabular(path, seed=0):
    rng = np.random.default_rng(seed)
    n = N_TRAIN + N_TEST
    x = rng.normal(0, 1, (n, 8)).astype(np.float32)
    y = (2 * x[:, 0] - x[:, 1] * x[:, 2] + 0.5 * np.sin(3 * x[:, 3]) + rng.normal(0, 0.05, n)).astype(np.float32)
    np.savez(path, x_train=x[:N_TRAIN], y_train=y[:N_TRAIN], x_test=x[N_TRAIN:], y_test=y[N_TRAIN:])


# ---------------------------------------------------------------- LSTM on (N, T, C)
class LSTMNet(nn.Module):
    def __init__(self, layers=2):
        super().__init__()
        self.inp = nn.Linear(3, 32)
        self.lstm = nn.LSTM(32, 32, num_layers=layers, batch_first=True)
        self.head = nn.Linear(32, 3)

    def forward(self, x):
        out, _ = self.lstm(torch.relu(self.inp(x)))
        return self.head(out[:, -1])


def lstm():
    return LSTMNet()


def make_sequence(path, seed=0):
    """(N, 20, 3) sequences; the class is which channel has the largest sum."""
    rng = np.random.default_rng(seed)
    n = N_TRAIN + N_TEST
    x = rng.normal(0, 1, (n, 20, 3)).astype(np.float32)
    y = x.sum(1).argmax(1)
    np.savez(path, x_train=x[:N_TRAIN], y_train=y[:N_TRAIN], x_test=x[N_TRAIN:], y_test=y[N_TRAIN:])


# ---------------------------------------------------------------- RGB 3x32x32 and a flattened "detector"
def rgb32():
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 3))


def make_rgb(path, seed=0):
    rng = np.random.default_rng(seed)
    n = N_TRAIN + N_TEST
    y = rng.integers(0, 3, n)
    x = rng.integers(0, 80, (n, 3, 32, 32)).astype(np.uint8)
    for c in range(3):
        x[y == c, c] += 120                  # the class is the dominant colour channel
    np.savez(path, x_train=x[:N_TRAIN], y_train=y[:N_TRAIN], x_test=x[N_TRAIN:], y_test=y[N_TRAIN:],
             mean=[0.4, 0.4, 0.4], std=[0.25, 0.25, 0.25])


def flat_detector():
    """A detector head flattened to (N, K): 25 anchors x (4 box + 1 score) = 125 outputs."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU(), nn.Conv2d(8, 5, 1), nn.Flatten(1),
                         nn.Unflatten(1, (5, 64)), nn.AdaptiveAvgPool1d(25), nn.Flatten(1))


def train(model, npz, steps=150, lr=3e-3, regression=False, seed=0):
    """Adam on the .npz's training split (inputs normalized as the pipeline does), for the teacher's weights."""
    from pipeline.data import load_npz
    from pipeline.tasks import resolve
    torch.manual_seed(seed)
    ds = load_npz(npz, resolve("regression" if regression else "classification"))
    x = ds.normalize(ds.x_train)
    y = torch.from_numpy(ds.y_train)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(y), (64,), generator=gen).numpy()
        out = x[idx].call(model)
        loss = (nn.functional.mse_loss(out.reshape(-1), y[idx]) if regression
                else nn.functional.cross_entropy(out, y[idx]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()
