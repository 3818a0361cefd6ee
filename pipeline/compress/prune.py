"""prune: dependency-aware structured channel pruning (torch-pruning DepGraph) to a budget.

Budgets (`prune.budget`): a fraction of MACs or parameters to remove (the pruning ratio is searched
by bisection until the pruned model is within `tolerance` of the goal), a plain channel ratio, or a
host latency goal (each candidate is exported to ONNX and timed in ONNX Runtime FP32; the search
keeps the least-pruned candidate that meets the goal, every measurement is recorded). With
`iterative_steps` > 1 the budget is approached in steps, with a short knowledge distillation from the
unpruned model between steps.

Residual adds, channel concat, depthwise/grouped convs, squeeze-and-excitation, BatchNorm/LayerNorm/
GroupNorm are followed by torch-pruning's dependency graph; attention heads are declared to it for
nn.MultiheadAttention and for modules with an integer `num_heads` and a `qkv` Linear (head
dimensions shrink, the head count stays). The classifier (the last conv/linear called) is never
pruned, the stem (the first) when `ignore_stem`, and any layer in `prune.ignore`. After pruning the
model must run, keep its output shape, and export to ONNX that ONNX Runtime runs like torch; a model
that fails any of these is a UserError naming the layer and how to exclude it.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from pipeline import models
from pipeline.backends import onnxruntime as ort_backend
from pipeline.config import PruneConfig
from pipeline.errors import UserError
from pipeline.latency import measure
from pipeline.compress.distill import check_finite_loss, check_finite_state, kd_loss
from pipeline.compress.prune_groups import groups_of, isolate, tolerant_index_mapping
from pipeline.compress.prune_layers import (attention_heads, attention_round_to, recurrent_coupled,  # noqa: F401
                                            sync_attention)
from pipeline.runner import log

Batches = list[tuple[torch.Tensor, torch.Tensor]]
# Upper end of the ratio search: above it most layers are left with a channel or two.
MAX_SEARCH_RATIO = 0.95
SEARCH_ITERATIONS = 14
LATENCY_ITERATIONS = 8
# A latency candidate this close under the goal ends the search (timing noise is larger than this).
LATENCY_SLACK = 0.05
ONNX_ATOL = 1e-3
# Ratio at which each channel group is tried before the search (see exclude_failing_groups).
PROBE_RATIO = 0.5
MAX_EXCLUDE_ROUNDS = 3      # re-isolations at one search ratio before the failure is the user's


def traced_layers(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of the conv/linear layers in the order forward calls them (each once)."""
    order: list[str] = []
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: order.append(n) if n not in order else None)
             for n, m in model.named_modules()
             if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.MultiheadAttention))]
    try:
        with torch.no_grad():
            model(*models.as_args(example))
    finally:
        for h in hooks:
            h.remove()
    return order


def protected_layers(model: nn.Module, example: torch.Tensor, cfg: PruneConfig, head_layers: bool = False) -> list[str]:
    """Layers never pruned: the classifier (last conv/linear called), the stem (first, with
    `ignore_stem`) and `cfg.ignore`, which must name existing modules. `head_layers` (a detector):
    every layer feeding the outputs directly too (each level's class and box convs keep their rows)."""
    names = dict(model.named_modules())
    unknown = [n for n in cfg.ignore if n not in names]
    if unknown:
        raise UserError(f"prune.ignore names unknown layers: {', '.join(unknown)}",
                        f"use module names such as {', '.join(list(names)[1:4])}")
    order = traced_layers(model, example)
    if not order:
        raise UserError("the model has no Conv/Linear layers that forward calls", "there is nothing to prune")
    auto = order[-1:] + (order[:1] if cfg.ignore_stem else [])
    if head_layers:
        from pipeline.compress.output_tail import torch_output_layers
        auto += torch_output_layers(model, models.as_args(example))
    rnn, coupled = recurrent_coupled(model, example)
    if rnn:
        log.info("[prune] recurrent layers %s are not pruned (nor the layers coupled to them: %s): torch-pruning "
                 "cannot prune them safely", ", ".join(rnn), ", ".join(coupled) or "none")
    return sorted(set(auto) | set(cfg.ignore) | set(rnn) | set(coupled))


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


class PruneFailed(UserError):
    """A pruning pass broke the model (torch-pruning failed, or the pruned model fails or changed shape)."""


@dataclass
class Setup:
    """What one pruning pass needs besides the model and the ratio."""

    criterion: str
    round_to: int
    ignored: list[str]
    global_pruning: bool = False
    max_layer_ratio: float = 1.0
    calibration: Batches = field(default_factory=list)  # (x, y) batches for Taylor's gradients


def failing_layer(model: nn.Module, example: torch.Tensor) -> tuple[Optional[str], Optional[BaseException]]:
    """Run forward; on failure, name the layer that failed if it was a leaf layer, else the last layer
    that finished (the error then came from the code between layers that uses its output)."""
    running: list[str] = []
    finished: list[str] = []

    def done(name: str) -> None:
        running.pop()
        finished.append(name)

    hooks = []
    for n, m in model.named_modules():
        if n:
            hooks.append(m.register_forward_pre_hook(lambda m, i, n=n: running.append(n)))
            hooks.append(m.register_forward_hook(lambda m, i, o, n=n: done(n)))
    try:
        with torch.no_grad():
            model(*models.as_args(example))
        return None, None
    except Exception as e:  # noqa: BLE001 -- any failure of the pruned model is reported with its layer
        mods = dict(model.named_modules())
        if running and not list(mods[running[-1]].children()):
            return running[-1], e
        return (finished[-1] if finished else (running[-1] if running else None)), e
    finally:
        for h in hooks:
            h.remove()


def check_pruned(original: nn.Module, pruned: nn.Module, example: torch.Tensor) -> None:
    """The pruned model must run and give the original's output shape, else a UserError naming the layer."""
    layer, err = failing_layer(pruned, example)
    if err is not None:
        where = f"at layer '{layer}'" if layer else "before its first layer"
        raise PruneFailed(f"the pruned model fails {where}: {err.__class__.__name__}: {str(err).splitlines()[0][:200]} "
                        "(torch-pruning could not follow how that layer's channels are used)",
                        f"exclude it with --set 'prune.ignore=[\"{layer or 'layer.name'}\"]'")
    with torch.no_grad():
        y_o, y_p = original(*models.as_args(example)), pruned(*models.as_args(example))
    if y_o.shape != y_p.shape:
        last = traced_layers(original, example)[-1:]
        raise PruneFailed(f"pruning changed the output shape {list(y_o.shape)} -> {list(y_p.shape)}",
                        f"add the output layer to prune.ignore, e.g. --set 'prune.ignore={last}'")


def make_pruner(m: nn.Module, example: torch.Tensor, ratio: float, setup: Setup, extra_ignored=()):
    """torch-pruning's pruner on `m` (modified in place by its step) for one pass."""
    import torch_pruning as tp
    ignored_mods = [m.get_submodule(n) for n in [*setup.ignored, *extra_ignored]]
    return tp.pruner.MetaPruner(
        m, models.as_args(example), importance=importance(setup.criterion), pruning_ratio=ratio,
        global_pruning=setup.global_pruning, max_pruning_ratio=setup.max_layer_ratio,
        ignored_layers=ignored_mods, round_to=attention_round_to(m, setup.round_to),
        num_heads=attention_heads(m))


def _step(m: nn.Module, example: torch.Tensor, ratio: float, setup: Setup, extra_ignored=()) -> None:
    with tolerant_index_mapping():       # groups through unmappable nodes are in setup.ignored already
        pruner = make_pruner(m, example, ratio, setup, extra_ignored)
        if setup.criterion == "taylor":
            if not setup.calibration:
                raise UserError("prune.criterion 'taylor' needs calibration batches for its gradients",
                                "pass training batches, or use --set prune.criterion=l2")
            m.zero_grad()
            for xb, yb in setup.calibration:
                nn.functional.cross_entropy(m(*models.as_args(xb)), yb).backward()
        pruner.step()
    m.zero_grad(set_to_none=True)
    sync_attention(m)


def prune_once(model: nn.Module, example: torch.Tensor, ratio: float, setup: Setup) -> nn.Module:
    """A pruned copy of `model` with `ratio` of each group's channels removed (global: of all)."""
    m = copy.deepcopy(model).eval()
    if ratio == 0:
        return m
    try:
        _step(m, example, ratio, setup)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 -- torch-pruning raises many types on graphs it cannot follow
        layer, _ = failing_layer(m, example)
        named = f" (the model now fails at layer '{layer}')" if layer else ""
        raise PruneFailed(f"torch-pruning cannot prune this model{named}: {e.__class__.__name__}: "
                        f"{str(e).splitlines()[0][:200]}",
                        f"exclude the layer with --set 'prune.ignore=[\"{layer or 'layer.name'}\"]'") from None
    check_pruned(model, m, example)
    return m.eval()


def _reason(e: BaseException) -> str:
    if isinstance(e, UserError):
        return e.problem
    return f"{e.__class__.__name__}: {(str(e).splitlines() or [''])[0][:200]}"


def exclude_failing_groups(model: nn.Module, example: torch.Tensor, setup: Setup,
                           ratio: float = PROBE_RATIO) -> tuple[Setup, list[dict]]:
    """Leave unpruned the channel groups torch-pruning cannot prune at `ratio` (see prune_groups); the
    returned Setup ignores their root modules. A UserError naming them when no group can be pruned."""
    if setup.criterion == "taylor" and not setup.calibration:
        raise UserError("prune.criterion 'taylor' needs calibration batches for its gradients",
                        "pass training batches, or use --set prune.criterion=l2")
    try:
        probe_model = copy.deepcopy(model).eval()
        import torch_pruning as tp
        with tolerant_index_mapping() as failed:
            dg = tp.DependencyGraph().build_dependency(probe_model, example_inputs=models.as_args(example))
            groups, blocked = groups_of(dg, [probe_model.get_submodule(n) for n in setup.ignored], probe_model, failed)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 -- tracing the dependency graph failed: nothing can be pruned
        layer, _ = failing_layer(model, example)
        raise UserError(f"torch-pruning cannot trace this model's dependency graph: {_reason(e)}",
                        f"make the forward traceable{f' around layer {layer!r}' if layer else ''}, "
                        "or run with --set prune.enabled=false") from None
    by_root = {g.root for g in groups}

    def probe(subset) -> Optional[str]:
        keep = {g.root for g in subset}
        m = copy.deepcopy(model).eval()
        try:
            _step(m, example, ratio, setup, sorted(by_root - keep))
            check_pruned(model, m, example)
        except Exception as e:  # noqa: BLE001 -- any failure excludes the groups tried
            return _reason(e)
        return None

    excluded = [g.record(why) for g, why in blocked.items()]
    excluded += isolate([g for g in groups if g not in blocked], probe)
    if excluded:
        if len(excluded) == len(groups):
            listed = "; ".join(f"'{g['root']}' ({g['reason'][:80]})" for g in excluded[:6])
            more = f" and {len(excluded) - 6} more" if len(excluded) > 6 else ""
            raise UserError(f"torch-pruning can prune none of this model's {len(groups)} channel groups: "
                            f"{listed}{more}", "run with --set prune.enabled=false, or simplify those layers")
        log.warning("[prune] %d of %d channel groups left unpruned (torch-pruning cannot prune them): %s",
                    len(excluded), len(groups), ", ".join(g["root"] for g in excluded))
        setup = dataclasses.replace(setup, ignored=sorted(set(setup.ignored) | {g["root"] for g in excluded}))
    return setup, excluded


def prune_or_exclude(model: nn.Module, example: torch.Tensor, ratio: float, setup: Setup,
                     excluded: list[dict]) -> tuple[nn.Module, Setup]:
    """prune_once, and when a group that pruned at the probe ratio breaks the model at this one (a grouped
    conv whose channel count stops dividing its groups, say), find the groups failing at this ratio,
    leave them unpruned (appended to `excluded`, with the ratio in the reason) and prune again."""
    for _ in range(MAX_EXCLUDE_ROUNDS):
        try:
            return prune_once(model, example, ratio, setup), setup
        except PruneFailed as e:
            first = e
            setup, more = exclude_failing_groups(model, example, setup, ratio=ratio)
            if not more:
                raise
            log.warning("[prune] at ratio %.3f %d more channel group(s) left unpruned: %s", ratio, len(more),
                        ", ".join(g["root"] for g in more))
            excluded += [{**g, "reason": f"at pruning ratio {ratio:.3f}: {g['reason']}"} for g in more]
    raise first


def onnx_latency_ms(model: nn.Module, example, threads: int, runs: int, scratch: Optional[Path] = None) -> dict:
    """Export to ONNX and time it in ONNX Runtime FP32 (p50 ms and the run facts). The export goes to a
    folder under `scratch` (the stage's own folder: a killed run leaves nothing in the system temp folder)."""
    with tempfile.TemporaryDirectory(prefix=".latency-", dir=scratch) as tmp:
        path = Path(tmp) / "candidate.onnx"
        ort_backend.export_onnx(model, example, path)
        runner = ort_backend.Runner(path, threads=threads)
        xb = runner.prepare(models.as_inputs(example))
        lat = measure(lambda: runner.run_raw(xb), warmup=10, runs=runs, threads=threads)
    return {"p50_ms": lat["p50_ms"], "p50_ci95_ms": lat["p50_ci95_ms"], "runs": runs, "threads": threads}


@dataclass
class Budget:
    """The quantity a search drives down, and its goal for one step."""

    kind: str                                   # "macs" | "params" | "latency"
    goal: float                                 # absolute: MACs, params or ms
    tolerance: float                            # absolute
    value: Callable[[nn.Module], tuple[float, dict]]


def next_ratio(lo: tuple[float, float], hi: tuple[float, float], goal: float) -> float:
    """Next ratio inside the bracket (lo, hi) of (ratio, value) pairs: interpolate the value in the
    kept fraction squared (MACs and params of a conv net scale roughly so), kept off the ends."""
    (r0, v0), (r1, v1) = lo, hi
    if v0 == v1:
        return (r0 + r1) / 2
    t = min(0.9, max(0.1, (v0 - goal) / (v0 - v1)))
    k0, k1 = (1 - r0) ** 2, (1 - r1) ** 2
    return 1 - math.sqrt(k0 + t * (k1 - k0))


def search(model: nn.Module, example: torch.Tensor, budget: Budget, setup: Setup,
           excluded: Optional[list[dict]] = None) -> tuple[nn.Module, list[dict], Setup]:
    """Search the pruning ratio of `model` towards `budget.goal` (interpolation inside a shrinking bracket).

    MACs/params: the candidate closest to the goal (stop within tolerance). Latency: the least-pruned
    candidate measured at or under the goal (stop within LATENCY_SLACK of it); a UserError if none.
    Groups that break the model at a ratio of the search are left unpruned (prune_or_exclude) and
    listed in `excluded`; the returned Setup ignores them."""
    excluded = [] if excluded is None else excluded
    start, _ = budget.value(model)
    lo, hi = (0.0, start), (MAX_SEARCH_RATIO, 0.0)   # value at the top end is unknown: assume 0
    trials: list[dict] = []
    best: Optional[tuple[nn.Module, float, float]] = None   # (model, value, ratio)
    iterations = LATENCY_ITERATIONS if budget.kind == "latency" else SEARCH_ITERATIONS
    for _ in range(iterations):
        mid = next_ratio(lo, hi, budget.goal)
        cand, setup = prune_or_exclude(model, example, mid, setup, excluded)
        value, facts = budget.value(cand)
        trials.append({"ratio": round(mid, 5), budget.kind: value, **facts})
        if budget.kind == "latency":
            if value <= budget.goal and (best is None or mid < best[2]):
                best = (cand, value, mid)
            if value <= budget.goal and budget.goal - value <= budget.tolerance:
                break
        else:
            if best is None or abs(value - budget.goal) < abs(best[1] - budget.goal):
                best = (cand, value, mid)
            if abs(value - budget.goal) <= budget.tolerance:
                break
        if value > budget.goal:
            lo = (mid, value)
        else:
            hi = (mid, value)
        if hi[0] - lo[0] < 1e-3:
            break
    if best is None:
        closest = min(trials, key=lambda t: t[budget.kind])
        raise UserError(f"latency goal {budget.goal:.3f} ms not reached: the fastest candidate measured "
                        f"{closest['latency']:.3f} ms at pruning ratio {closest['ratio']}",
                        "raise prune.latency_ms, or use a faster target backend/threads")
    return best[0], trials, setup


def short_kd(student: nn.Module, teacher: nn.Module, data: Batches, temperature: float, alpha: float,
             lr: float, loss_fn=None) -> list[float]:
    """A few hundred batches of KD (SGD, cosine decay) from the unpruned model; returns the losses."""
    opt = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, len(data)))
    losses = []
    student.train()
    for xb, yb in data:
        with torch.no_grad():
            t = teacher(*models.as_args(xb))
        loss = (loss_fn or kd_loss)(student(*models.as_args(xb)), t, yb, temperature, alpha)
        value = float(loss.detach())
        check_finite_loss(value, len(losses) + 1, lr, "prune (short KD between steps)")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(round(value, 5))
    check_finite_state(student.state_dict(), "prune (short KD between steps)", lr)
    student.zero_grad(set_to_none=True)
    student.eval()
    return losses


@dataclass
class KDSettings:
    """The short distillation between iterative steps."""

    batches: Batches
    temperature: float = 4.0
    alpha: float = 0.7
    lr: float = 0.01
    loss_fn: Optional[Callable] = None          # the task's distillation loss (default: classification KD)


def prune_to_budget(model: nn.Module, example: torch.Tensor, cfg: PruneConfig, setup: Setup,
                    threads: int = 2, kd: Optional[KDSettings] = None,
                    latency: Optional[Callable[[nn.Module], dict]] = None,
                    scratch: Optional[Path] = None) -> tuple[nn.Module, dict]:
    """Prune `model` to the budget of `cfg`, in `cfg.iterative_steps` steps (KD between them when `kd`).

    `latency(model) -> {"p50_ms", ...}` is the cost of the latency budget: by default the model exported
    to ONNX and timed in ONNX Runtime FP32 on this host (`onnx_latency_ms`); tests pass a fixed function,
    and a device can be the one that measures.

    Returns the pruned model and a record: the goal, the unpruned reference values, and per step the
    search trials (and every latency measurement)."""
    model = model.eval()
    base_macs, base_params = models.count_macs(model, example), models.count_params(model)
    steps = cfg.iterative_steps
    record: dict = {"budget": cfg.budget, "iterative_steps": steps, "steps": [], "excluded_groups": []}
    base_latency = None
    if latency is None:
        def latency(m: nn.Module) -> dict:
            return onnx_latency_ms(m, example, threads, cfg.latency_runs, scratch)
    if cfg.budget == "latency":
        if cfg.latency_ms is None:
            raise UserError("prune.budget is 'latency' but prune.latency_ms is not set",
                            "add --set prune.latency_ms=<host ONNX Runtime p50 goal in ms>")
        base_latency = latency(model)
        record["latency_before"] = base_latency
        record["latency_goal_ms"] = cfg.latency_ms
        if base_latency["p50_ms"] <= cfg.latency_ms:
            log.info("[prune] unpruned latency %.3f ms already meets %.3f ms: not pruned",
                     base_latency["p50_ms"], cfg.latency_ms)
            record["steps"].append({"step": 1, "ratio": 0.0, "search": []})
            return copy.deepcopy(model), record
    if setup.criterion == "bn_scale" and not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise UserError("prune.criterion 'bn_scale' ranks channels by BatchNorm scales, but the model has no BatchNorm",
                        "use --set prune.criterion=l2 (or l1, taylor, lamp)")

    if not (cfg.budget in ("macs", "params") and getattr(cfg, f"{cfg.budget}_reduction") == 0):
        setup, record["excluded_groups"] = exclude_failing_groups(model, example, setup)

    def macs_of(m: nn.Module) -> tuple[float, dict]:
        v = models.count_macs(m, example)
        return v, {"macs_fraction": v / base_macs}

    def params_of(m: nn.Module) -> tuple[float, dict]:
        v = models.count_params(m)
        return v, {"params_fraction": v / base_params}

    def latency_of(m: nn.Module) -> tuple[float, dict]:
        lat = latency(m)
        return lat["p50_ms"], {"latency_measurement": lat}

    current = copy.deepcopy(model)
    for k in range(1, steps + 1):
        step: dict = {"step": k}
        if cfg.budget == "ratio":
            # Each step keeps the same fraction of the channels left, so N steps keep (1 - ratio) in all.
            r = 1 - (1 - cfg.ratio) ** (1 / steps)
            current, setup = prune_or_exclude(current, example, r, setup, record["excluded_groups"])
            step.update({"ratio": round(r, 5), "search": []})
        else:
            share = k / steps
            if cfg.budget == "latency":
                b = base_latency["p50_ms"]
                budget = Budget("latency", b - (b - cfg.latency_ms) * share, LATENCY_SLACK * cfg.latency_ms, latency_of)
            elif cfg.budget == "params":
                budget = Budget("params", base_params * (1 - cfg.params_reduction * share),
                                cfg.tolerance * base_params, params_of)
            else:
                budget = Budget("macs", base_macs * (1 - cfg.macs_reduction * share), cfg.tolerance * base_macs, macs_of)
            if (cfg.budget == "macs" and cfg.macs_reduction == 0) or (cfg.budget == "params" and cfg.params_reduction == 0):
                step.update({"goal": budget.goal, "search": []})
            else:
                current, trials, setup = search(current, example, budget, setup, record["excluded_groups"])
                step.update({"goal": budget.goal, "search": trials})
        if kd is not None and k < steps and kd.batches:
            step["kd_losses"] = short_kd(current, model, kd.batches, kd.temperature, kd.alpha, kd.lr, kd.loss_fn)
        step.update({"macs": models.count_macs(current, example), "params": models.count_params(current)})
        record["steps"].append(step)
        log.info("[prune] step %d/%d: MACs %.3f, params %.3f of the unpruned", k, steps,
                 step["macs"] / base_macs, step["params"] / base_params)

    macs, params = models.count_macs(current, example), models.count_params(current)
    if cfg.budget in ("macs", "params"):
        goal_frac = 1 - (cfg.macs_reduction if cfg.budget == "macs" else cfg.params_reduction)
        got = (macs / base_macs) if cfg.budget == "macs" else (params / base_params)
        record["goal_fraction"] = goal_frac
        record["met"] = abs(got - goal_frac) <= cfg.tolerance
        if not record["met"]:
            log.warning("[prune] closest reachable %s fraction %.3f (goal %.3f) with round_to %d",
                        cfg.budget, got, goal_frac, setup.round_to)
    if cfg.budget == "latency":
        record["latency_after"] = latency(current)
        record["met"] = record["latency_after"]["p50_ms"] <= cfg.latency_ms * (1 + LATENCY_SLACK)
    return current, record


def calibration_batches(ds, seed: int, n: int, batch: int) -> Batches:
    """`n` random training samples, normalized, in batches of `batch` (seeded)."""
    idx = np.random.default_rng(seed).choice(len(ds.x_train), size=min(n, len(ds.x_train)), replace=False)
    return [(ds.normalize(ds.x_train[idx[i:i + batch]]).torch(), torch.from_numpy(ds.y_train[idx[i:i + batch]]))
            for i in range(0, len(idx), batch)]


def check_onnx(meta: dict) -> None:
    """The exported pruned model must answer like torch in ONNX Runtime."""
    if meta["max_abs_diff_vs_torch"] > ONNX_ATOL:
        raise UserError(f"the pruned model's ONNX export differs from torch by {meta['max_abs_diff_vs_torch']:.3g}",
                        "exclude the layers whose pruned form the exporter mistranslates with prune.ignore")
