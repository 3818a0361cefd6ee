"""A MobileNet-v1-style depthwise-separable CNN for 28x28 single-channel images.

Depthwise convolutions are where INT8 post-training quantization breaks first: after BatchNorm
folding, the per-channel weight ranges of a depthwise layer differ by orders of magnitude, so one
per-tensor scale rounds the small channels to zero. The bundled checkpoint (`dw-separable/`, trained
by `python -m pipeline.models.train_teacher --model dw-separable`) is what the tests and
benchmarks use to show the quantize stage's cross-layer equalization and bias correction at work:

    python -m pipeline run --model pipeline/models/mobilenet.py:dw_separable \
        --weights pipeline/models/dw-separable/teacher.pt --target x86-cpu
"""
from __future__ import annotations

from torch import nn


def dw_separable(num_classes: int = 10, in_channels: int = 1) -> nn.Sequential:
    """A stem conv (stride 2) and three depthwise-separable blocks (dw 3x3 + pw 1x1, each BN + ReLU)."""
    def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(),
                nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
    return nn.Sequential(nn.Conv2d(in_channels, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         *block(16, 32, 1), *block(32, 64, 2), *block(64, 128, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, num_classes))
