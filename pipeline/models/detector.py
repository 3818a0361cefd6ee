"""The bundled default detector: a small YOLO-style anchor-free detector for 96x96 grey images.

Backbone of strided 3x3 convs with residual blocks (strides 8, 16, 32 feed the neck), a PAN neck
(top-down upsample + concat, bottom-up strided conv + concat), and a decoupled head per level: a box
branch predicting a distribution over REG_MAX bins for each of the four box sides (distribution focal
style, YOLOv8's DFL) and a class branch. `Decode` turns the raw maps into what YOLOv8/YOLO11 exports:
(N, 4 + classes, anchors), boxes as cx, cy, w, h in input pixels, then per-class sigmoid scores.

~0.33M parameters, ~21M MACs at 1x96x96 with the default widths. ReLU throughout (fuses into the conv
on every engine here).
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

REG_MAX = 8          # bins per box side; a side reaches (REG_MAX - 1) * stride px from its anchor
STRIDES = (8, 16, 32)


def conv(c_in: int, c_out: int, k: int = 3, s: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class Residual(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.cv1, self.cv2 = conv(c, c), conv(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.cv2(self.cv1(x))


class Decode(nn.Module):
    """Raw per-level maps -> (N, 4 + C, A): DFL expectation per side, times the stride, around each anchor
    point (cell centre), as cx, cy, w, h; class logits through a sigmoid. Anchors are level by level,
    row-major, finest level first (the order YOLOv8 exports)."""

    def __init__(self, strides=STRIDES, reg_max: int = REG_MAX):
        super().__init__()
        self.strides, self.reg_max = tuple(strides), reg_max
        self.register_buffer("proj", torch.arange(reg_max, dtype=torch.float32), persistent=False)

    def anchors(self, sizes) -> tuple[torch.Tensor, torch.Tensor]:
        """(2, A) cell centres and (A,) strides for the levels' (h, w), made with numpy: constants in every
        export (no arange / meshgrid ops for a quantizer to meet)."""
        pts, st = [], []
        for (h, w), s in zip(sizes, self.strides):
            gy, gx = np.meshgrid((np.arange(h) + 0.5) * s, (np.arange(w) + 0.5) * s, indexing="ij")
            pts.append(np.stack([gx.reshape(-1), gy.reshape(-1)]))
            st.append(np.full(h * w, float(s)))
        return (torch.from_numpy(np.concatenate(pts, 1).astype(np.float32)),
                torch.from_numpy(np.concatenate(st).astype(np.float32)))

    def forward(self, box_maps: list[torch.Tensor], cls_maps: list[torch.Tensor]) -> torch.Tensor:
        n = box_maps[0].shape[0]
        with warnings.catch_warnings():   # a tracer warns that the sizes become constants: that is the intent
            warnings.simplefilter("ignore")
            point, stride = self.anchors(tuple(tuple(int(d) for d in m.shape[-2:]) for m in box_maps))
        box = torch.cat([m.flatten(2) for m in box_maps], 2)                   # (N, 4R, A)
        dist = box.view(n, 4, self.reg_max, -1).softmax(2)
        ltrb = (dist * self.proj.view(1, 1, -1, 1)).sum(2) * stride           # (N, 4, A) px
        lt, rb = ltrb[:, :2], ltrb[:, 2:]
        xyxy_lo, xyxy_hi = point - lt, point + rb
        boxes = torch.cat([(xyxy_lo + xyxy_hi) / 2, xyxy_hi - xyxy_lo], 1)       # cx, cy, w, h
        scores = torch.cat([m.flatten(2) for m in cls_maps], 2).sigmoid()
        return torch.cat([boxes, scores], 1)


class Head(nn.Module):
    """Decoupled head: per level a box branch (4 * REG_MAX) and a class branch (num_classes)."""

    def __init__(self, channels, num_classes: int, hidden: int = 32, reg_max: int = REG_MAX, strides=STRIDES):
        super().__init__()
        self.box = nn.ModuleList(nn.Sequential(conv(c, hidden), nn.Conv2d(hidden, 4 * reg_max, 1)) for c in channels)
        self.cls = nn.ModuleList(nn.Sequential(conv(c, hidden), nn.Conv2d(hidden, num_classes, 1)) for c in channels)
        self.decode = Decode(strides, reg_max)
        for seq in self.cls:   # prior: few anchors hold an object (focal-loss style initial bias)
            nn.init.constant_(seq[-1].bias, -4.0)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.decode([b(f) for b, f in zip(self.box, feats)], [c(f) for c, f in zip(self.cls, feats)])


class TinyYolo(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 10, widths=(16, 24, 32, 48, 64)):
        super().__init__()
        w0, w1, w2, w3, w4 = widths
        self.stem = conv(in_channels, w0, 3, 2)                                   # /2
        self.stage1 = nn.Sequential(conv(w0, w1, 3, 2), Residual(w1))               # /4
        self.stage2 = nn.Sequential(conv(w1, w2, 3, 2), Residual(w2))               # /8  (P3)
        self.stage3 = nn.Sequential(conv(w2, w3, 3, 2), Residual(w3))               # /16 (P4)
        self.stage4 = nn.Sequential(conv(w3, w4, 3, 2), Residual(w4))               # /32 (P5)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.top4 = conv(w4 + w3, w3)
        self.top3 = conv(w3 + w2, w2)
        self.down3 = conv(w2, w2, 3, 2)
        self.out4 = conv(w2 + w3, w3)
        self.down4 = conv(w3, w3, 3, 2)
        self.out5 = conv(w3 + w4, w4)
        self.head = Head((w2, w3, w4), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p3 = self.stage2(self.stage1(self.stem(x)))
        p4 = self.stage3(p3)
        p5 = self.stage4(p4)
        t4 = self.top4(torch.cat([self.up(p5), p4], 1))
        o3 = self.top3(torch.cat([self.up(t4), p3], 1))
        o4 = self.out4(torch.cat([self.down3(o3), t4], 1))
        o5 = self.out5(torch.cat([self.down4(o4), p5], 1))
        return self.head([o3, o4, o5])


def tiny_yolo(num_classes: int = 10, in_channels: int = 1) -> TinyYolo:
    return TinyYolo(in_channels, num_classes)
