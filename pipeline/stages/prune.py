"""prune: dependency-aware structured channel pruning (torch-pruning DepGraph) to a MACs budget.

The pruning ratio is searched by bisection until the pruned model's MACs are within `tolerance` of
the goal; channel counts are rounded to the target's `round_to`; the classifier is never pruned.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline import models
from pipeline.backends import onnxruntime as ort_backend
from pipeline.errors import UserError
from pipeline.runner import Context, Stage, log
from pipeline.stages.load import model_spec


def round_to(ctx: Context) -> int:
    """The largest round_to among the targets (a pruned model shared by targets must suit all)."""
    return ctx.config.prune.round_to or max(t.round_to for t in ctx.targets)


def output_layers(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of the layers that produce the model's output (the classifier): never pruned.

    Found by tracing: the last Linear/Conv module called in forward order, plus any module whose
    output width equals the logits width and is called after the last pooling/flatten."""
    order: list[str] = []
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: order.append(n))
             for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    return order[-1:]


def importance(criterion: str):
    import torch_pruning as tp
    return {
        "l1": lambda: tp.importance.MagnitudeImportance(p=1),
        "l2": lambda: tp.importance.MagnitudeImportance(p=2),
        "bn_scale": lambda: tp.importance.BNScaleImportance(),
        "taylor": lambda: tp.importance.TaylorImportance(),
        "lamp": lambda: tp.importance.LAMPImportance(p=2),
    }[criterion]()


def layer_channels(model: nn.Module) -> dict[str, int]:
    return {n: m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
            for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def prune_once(model: nn.Module, example: torch.Tensor, ratio: float, ctx: Context, ignored: list[str],
               taylor_batches: list[tuple[torch.Tensor, torch.Tensor]]) -> nn.Module:
    """A pruned copy of `model` at channel ratio `ratio`."""
    import torch_pruning as tp
    m = copy.deepcopy(model)
    cfg = ctx.config.prune
    ignored_mods = [m.get_submodule(n) for n in ignored]
    try:
        pruner = tp.pruner.MetaPruner(
            m, example, importance=importance(cfg.criterion), pruning_ratio=ratio,
            global_pruning=cfg.global_pruning, ignored_layers=ignored_mods, round_to=round_to(ctx))
        if cfg.criterion == "taylor":
            m.zero_grad()
            for xb, yb in taylor_batches:
                nn.functional.cross_entropy(m(xb), yb).backward()
        pruner.step()
    except Exception as e:  # noqa: BLE001 -- torch-pruning raises many types on graphs it cannot follow
        raise UserError(f"torch-pruning cannot prune this model: {e.__class__.__name__}: "
                        f"{str(e).splitlines()[0][:200]}",
                        "exclude the layer named above with --set 'prune.ignore=[\"layer.name\"]'") from None
    m.zero_grad(set_to_none=True)
    return m.eval()


class PruneStage(Stage):
    name = "prune"
    inputs = ("load",)

    def config_slice(self, ctx: Context) -> dict:
        return {**ctx.config.prune.model_dump(), "round_to": round_to(ctx), "seed": ctx.config.seed}

    def run(self, ctx: Context, out: Path) -> dict:
        cfg, ds = ctx.config.prune, ctx.data
        spec = model_spec(ctx)
        torch.manual_seed(ctx.config.seed)
        teacher = models.load_model(spec, ctx.artifact("load", "model.pt"))
        example = torch.from_numpy(ds.normalize(ds.x_test[:1]))
        base_macs, base_params = models.count_macs(teacher, example), models.count_params(teacher)
        names = dict(teacher.named_modules())
        unknown = [n for n in cfg.ignore if n not in names]
        if unknown:
            raise UserError(f"prune.ignore names unknown layers: {', '.join(unknown)}",
                            f"use module names such as {', '.join(list(names)[1:4])}")
        ignored = sorted(set(output_layers(teacher, example)) | set(cfg.ignore))
        rng = np.random.default_rng(ctx.config.seed)
        idx = rng.choice(len(ds.x_train), size=min(256, len(ds.x_train)), replace=False)
        taylor = [(torch.from_numpy(ds.normalize(ds.x_train[idx[i:i + 64]])), torch.from_numpy(ds.y_train[idx[i:i + 64]]))
                  for i in range(0, len(idx), 64)]

        goal = base_macs * (1 - cfg.macs_reduction)
        trials = []
        if cfg.macs_reduction == 0:
            student = copy.deepcopy(teacher)
        else:
            lo, hi, best = 0.0, 0.95, None
            for _ in range(14):
                mid = (lo + hi) / 2
                cand = prune_once(teacher, example, mid, ctx, ignored, taylor)
                macs = models.count_macs(cand, example)
                trials.append({"ratio": round(mid, 5), "macs": macs, "macs_fraction": macs / base_macs})
                if best is None or abs(macs - goal) < abs(best[1] - goal):
                    best = (cand, macs, mid)
                if abs(macs - goal) <= cfg.tolerance * base_macs:
                    break
                lo, hi = (mid, hi) if macs > goal else (lo, mid)
            student, macs, ratio = best
            if abs(macs - goal) > cfg.tolerance * base_macs:
                log.warning("[prune] closest reachable MACs fraction %.3f (goal %.3f) with round_to %d",
                            macs / base_macs, 1 - cfg.macs_reduction, round_to(ctx))
        with torch.no_grad():
            y_t, y_s = teacher(example), student(example)
        if y_t.shape != y_s.shape:
            raise UserError(f"pruning changed the output shape {list(y_t.shape)} -> {list(y_s.shape)}",
                            f"add the output layer to prune.ignore")
        macs, params = models.count_macs(student, example), models.count_params(student)
        models.save_model(student, out / "model.pt")
        models.export_pt2(student, example, out / "model.pt2")
        ort_backend.export_onnx(student, example, out / "model.onnx")
        before, after = layer_channels(teacher), layer_channels(student)
        return {
            "criterion": cfg.criterion, "round_to": round_to(ctx), "ignored_layers": ignored,
            "macs_before": base_macs, "macs_after": macs, "macs_fraction": macs / base_macs,
            "macs_goal_fraction": 1 - cfg.macs_reduction,
            "params_before": base_params, "params_after": params, "params_fraction": params / base_params,
            "channels": {n: [before[n], after.get(n)] for n in before},
            "search": trials,
            "params": params, "macs": macs,
            "artifacts": [{"name": "pruned", "file": "model.onnx", "backend": "onnxruntime", "precision": "fp32",
                           "params": params, "macs": macs}],
        }
