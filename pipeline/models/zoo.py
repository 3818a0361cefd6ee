"""torchvision and timm architectures (no pretrained weights) for the zoo benchmark and tests.

The only torchvision wheel PyPI serves for torch 2.13 (0.28.0) is a CUDA build: its `_C.so` links
libtorch_cuda.so, which the CPU torch lacks, so it does not load and `import torchvision` then fails
in `torchvision/_meta_registrations.py` with "operator torchvision::nms does not exist" (and so does
`import timm`, which imports torchvision). PyPI has no torchvision source distribution to build
(only 0.1.6), and the CPU wheels' index is not reachable from the machines this project runs on.
The wheel's Python code is intact and classification models never call its C++ operators (nms,
roi_align, deform_conv2d, ...), so `import_torchvision()` declares those operators' schemas, with no
kernel, before importing it: the meta registrations then succeed, and calling one of the detection
operators raises torch's "no kernel" error instead of running. Only when `_C` did load (a CPU build
of torchvision) is nothing declared.
"""
from __future__ import annotations

import importlib.util
from typing import Callable, Optional

from torch import nn

# Schemas of the operators torchvision 0.28's _C registers (the ones its meta/autograd registrations
# name). Declared only when _C cannot be loaded.
_OPS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "box_iou_rotated(Tensor boxes1, Tensor boxes2) -> Tensor",
    "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
    "int sampling_ratio, bool aligned) -> Tensor",
    "_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
    "SymInt batch_size, SymInt channels, SymInt height, SymInt width, int sampling_ratio, bool aligned) -> Tensor",
    "qroi_align(Tensor input, Tensor rois, float input_scale, int input_zero_point, float rois_scale, "
    "int rois_zero_point, float spatial_scale, SymInt pooled_height, SymInt pooled_width, int sampling_ratio, "
    "bool aligned) -> Tensor",
    "ps_roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
    "int sampling_ratio) -> (Tensor, Tensor)",
    "_ps_roi_align_backward(Tensor grad, Tensor rois, Tensor channel_mapping, float spatial_scale, "
    "SymInt pooled_height, SymInt pooled_width, int sampling_ratio, SymInt batch_size, SymInt channels, "
    "SymInt height, SymInt width) -> Tensor",
    "roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width) "
    "-> (Tensor, Tensor)",
    "_roi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width) -> Tensor",
    "ps_roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width) "
    "-> (Tensor, Tensor)",
    "_ps_roi_pool_backward(Tensor grad, Tensor rois, Tensor channel_mapping, float spatial_scale, "
    "SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, "
    "SymInt width) -> Tensor",
    "deform_conv2d(Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, SymInt stride_h, "
    "SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, SymInt dilation_w, SymInt groups, "
    "SymInt offset_groups, bool use_mask) -> Tensor",
    "_deform_conv2d_backward(Tensor grad, Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, "
    "SymInt stride_h, SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, SymInt dilation_w, "
    "SymInt groups, SymInt offset_groups, bool use_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
)
_LIBS: list = []   # the Library objects must stay alive for their definitions to stay


def _declare_ops() -> None:
    import torch
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return
    import glob
    import os
    so = glob.glob(os.path.join(list(spec.submodule_search_locations)[0], "_C*.so"))
    try:
        if so:
            torch.ops.load_library(so[0])
            return                                  # a CPU build: its own operators are there
    except (OSError, RuntimeError):
        pass
    if _LIBS:
        return
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _OPS:
        try:
            lib.define(schema)
        except RuntimeError:                        # already declared (a second call, or _C half-loaded)
            pass
    _LIBS.append(lib)


def import_torchvision():
    """torchvision, importable with the CPU torch (see the module doc); None when not installed."""
    if importlib.util.find_spec("torchvision") is None:
        return None
    _declare_ops()
    import torchvision
    return torchvision


def import_timm():
    """timm (needs torchvision); None when either is not installed."""
    if import_torchvision() is None or importlib.util.find_spec("timm") is None:
        return None
    import timm
    return timm


def torchvision_names() -> list[str]:
    """Every torchvision classification architecture (tv/NAME); [] when torchvision is not installed."""
    tv = import_torchvision()
    return [f"tv/{n}" for n in tv.models.list_models(module=tv.models)] if tv else []


# One or two small members of each timm family (the families the issue names, plus a few more).
TIMM_SAMPLE = (
    "resnet18", "resnet50d", "seresnext26d_32x4d", "regnetx_002", "regnety_004", "mobilenetv2_050",
    "mobilenetv3_small_050", "mobilenetv4_conv_small", "efficientnet_b0", "tf_efficientnet_b0",
    "efficientnet_lite0", "ghostnet_050", "densenet121", "convnext_atto", "vit_tiny_patch16_224",
    "deit_tiny_patch16_224", "swin_tiny_patch4_window7_224", "mobilevit_xxs", "mobilevitv2_050",
    "efficientvit_b0", "efficientvit_m0", "repvit_m1", "fastvit_t8", "levit_128s", "edgenext_xx_small",
    "rexnet_100", "hrnet_w18_small", "dla34", "cspresnet50", "mixnet_s", "lcnet_050", "dpn48b",
    "res2net50_14w_8s", "resnest14d", "inception_v3", "xception41", "coat_lite_tiny", "pit_ti_224",
)


def timm_names(names: Optional[tuple] = None) -> list[str]:
    """The sample of timm families (timm/NAME) that the installed timm offers."""
    timm = import_timm()
    if timm is None:
        return []
    available = set(timm.list_models())
    return [f"timm/{n}" for n in (names or TIMM_SAMPLE) if n in available]


def architectures() -> list[str]:
    return timm_names() + torchvision_names()


def size_kwargs(name: str, size: int) -> list[dict]:
    """Build keyword sets to try for an input of `size` (fixed-size transformers take it as an argument)."""
    if name.startswith("tv/") and any(k in name for k in ("vit_", "maxvit")):
        return [{"image_size": size}]
    if name.startswith("timm/"):
        return [{"img_size": size}, {}]
    return [{}]


def build(name: str, kwargs: Optional[dict] = None, num_classes: int = 10) -> nn.Module:
    """A zoo architecture by name (tv/NAME or timm/NAME), no pretrained weights, `num_classes` outputs."""
    kwargs = dict(kwargs or {})
    src, _, arch = name.partition("/")
    if src == "tv":
        tv = import_torchvision()
        if tv is None:
            raise ImportError("torchvision is not installed")
        return tv.models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
    if src == "timm":
        timm = import_timm()
        if timm is None:
            raise ImportError("timm (and torchvision) are not installed")
        return timm.create_model(arch, pretrained=False, num_classes=num_classes, **kwargs)
    raise ValueError(f"unknown zoo architecture {name!r}: write tv/NAME or timm/NAME")
