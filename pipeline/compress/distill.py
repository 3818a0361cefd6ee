"""distill: the teacher (the loaded model) teaches the pruned student.

Loss = alpha * T^2 * KL(softmax(s/T) || softmax(t/T)) + (1 - alpha) * CE(s, y)
       + feature_weight * mean over `feature_layers` of MSE(adapter(student feature), teacher feature).

Feature distillation (FitNets-style hints) matches intermediate outputs of modules that teacher and
student share by name (pruning keeps names, not widths). Where the widths differ a learned adapter
maps the student's channels to the teacher's (1x1 conv for NCHW maps, linear for tokens/vectors); the
adapters train with the student and are dropped afterwards: the shipped model does not contain them.
`feature_layers = ["auto"]` picks, for every spatial resolution of the teacher, the module that
finishes last at it (the end of each stage). `feature_layers = ["blocks"]` matches the hidden states of
encoder stacks block by block, with `layer_map` saying which teacher block each student block learns
from when the student has fewer (distill_layers.py).

SGD with Nesterov momentum, linear warm-up then cosine decay, validation on a held-out slice of the
training split each epoch (never the test split), best checkpoint kept, early stopping. Inputs are not
augmented, so the teacher runs once: its logits are cached, and so are its features (fp16) when they
fit in `feature_cache_mb`; otherwise the teacher runs every step for its features. A resume checkpoint
is written every `checkpoint_every` steps outside the stage's temporary folder: a killed run continues
from it.

Device: `distill.device = "auto"` trains on the GPU when torch sees one (cuda:LOCAL_RANK under
torchrun), else on the CPU. Under torchrun the stage runs on every rank with DistributedDataParallel:
each global batch of `batch_size` is split across the ranks, so the optimisation matches a single
process; rank 0 alone validates (its decision is broadcast), checkpoints and writes the outputs.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline import distributed
from pipeline.errors import UserError
from pipeline.models import as_args
from pipeline.compress.accuracy import torch_accuracy
from pipeline.compress.distill_layers import BLOCKS, block_pairs
from pipeline.runner import Progress, log


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            temperature: float, alpha: float) -> torch.Tensor:
    """The classification task's distillation loss (soft-target KL + hard-label CE)."""
    from pipeline.tasks.classification import Classification
    return Classification().distill_loss(student_logits, teacher_logits, labels, temperature, alpha)


def check_finite_loss(value: float, step: int, lr: float, where: str) -> None:
    """Stop training whose loss became NaN or infinite: one line naming the step and the lr."""
    if not math.isfinite(value):
        raise UserError(f"{where}: the loss became non-finite ({value}) at step {step}: training diverged",
                        f"lower distill.lr (now {lr:g}) and run the same command again")


def check_finite_state(state: dict, where: str, lr: float) -> None:
    """Stop a stage whose trained weights hold NaN or infinity (it must never end 'done')."""
    bad = sum(int((~torch.isfinite(t)).sum()) for t in state.values() if t.is_floating_point())
    if bad:
        raise UserError(f"{where}: {bad} trained weight(s) are non-finite (NaN or infinity)",
                        f"lower distill.lr (now {lr:g}) and run the same command again")


def split_train_val(n: int, val_fraction: float, limit: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction))
    val, train = perm[:n_val], perm[n_val:]
    if limit:
        train = train[:limit]
        val = val[: max(1, min(len(val), limit // 10))] if n_val else val
    return np.sort(train), np.sort(val)


def resolve_device(name: str) -> torch.device:
    """`auto`: the GPU when torch sees one (this rank's, under torchrun), else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("distill.device is 'cuda' but this torch sees no GPU",
                            "set distill.device=auto or cpu, or install a CUDA build of torch")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return torch.device("cpu")


# ---------------------------------------------------------------- feature distillation
class FeatureTap:
    """Forward hooks that keep the outputs of named modules of one model, for one forward at a time."""

    def __init__(self, model: nn.Module, names: list[str]):
        self.out: dict[str, torch.Tensor] = {}
        # clone(): a later in-place op (ReLU(inplace=True)) must not change what the loss reads; of a block
        # that returns a tuple (a Hugging Face layer), the first element is its hidden state
        self._handles = [model.get_submodule(n).register_forward_hook(
            lambda _m, _i, o, n=n: self.out.__setitem__(n, (o[0] if isinstance(o, tuple) else o).clone()))
            for n in names]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def auto_feature_layers(model: nn.Module, example: torch.Tensor) -> list[str]:
    """For every spatial resolution (bigger than 1x1) of the model's NCHW intermediate outputs, the
    module that finishes last at it, in order of resolution first seen: the end of each stage. Of a
    container and the child whose output it returns, the child is named (`layers.3`, not `layers`),
    unless the child runs more than once per forward (a shared ReLU), where a hook would be ambiguous."""
    order: list[tuple[str, torch.Tensor]] = []
    handles = [m.register_forward_hook(lambda _m, _i, o, n=n: order.append((n, o))
                                       if isinstance(o, torch.Tensor) and o.dim() == 4 else None)
               for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            model.eval()(*as_args(example))
    finally:
        for h in handles:
            h.remove()
    calls: dict[str, int] = {}
    for name, _ in order:
        calls[name] = calls.get(name, 0) + 1
    stage_end: dict[tuple[int, ...], tuple[str, torch.Tensor]] = {}   # keeps resolutions in first-seen order
    for name, o in order:
        hw = tuple(o.shape[2:])
        if hw != (1, 1) and calls[name] == 1 and not (hw in stage_end and stage_end[hw][1] is o):
            stage_end[hw] = (name, o)
    return [name for name, _ in stage_end.values()]


def feature_pairs(cfg, teacher: nn.Module, student: nn.Module, example) -> list[tuple[str, str]]:
    """(student module, teacher module) pairs whose outputs are matched: the same name in both, or with
    feature_layers = ["blocks"] every student encoder block and its teacher block (distill_layers.py)."""
    if list(cfg.feature_layers) == [BLOCKS]:
        return block_pairs(cfg.layer_map, teacher, student)
    return [(n, n) for n in feature_layers(cfg, teacher, example)]


def feature_layers(cfg, teacher: nn.Module, example: torch.Tensor) -> list[str]:
    names = list(cfg.feature_layers)
    if names == ["auto"]:
        names = auto_feature_layers(teacher, example)
        if not names:
            raise UserError("distill.feature_layers=auto found no NCHW feature maps in the model",
                            "name the modules to match, e.g. --set 'distill.feature_layers=[\"layers.3\"]'")
        return names
    known = {n for n, _ in teacher.named_modules() if n}
    unknown = [n for n in names if n not in known]
    if unknown:
        hint = ", ".join(sorted(known, key=len)[:6])
        raise UserError(f"distill.feature_layers names modules the model does not have: {', '.join(unknown)}",
                        f"use names from model.named_modules() (e.g. {hint}), [\"auto\"] or [\"blocks\"]")
    return names


def make_adapter(name: str, s: torch.Size, t: torch.Size) -> nn.Module:
    """Maps a student feature of shape `s` to the teacher's `t` (batch dim included): identity when the
    widths match, else a learned 1x1 conv (NCHW) or linear (channels last) layer."""
    ch = 1 if len(s) == 4 else len(s) - 1
    if len(s) != len(t) or [d for i, d in enumerate(s) if i not in (0, ch)] != [d for i, d in enumerate(t) if i not in (0, ch)]:
        raise UserError(f"distill.feature_layers: '{name}' gives {tuple(s[1:])} in the student but "
                        f"{tuple(t[1:])} in the teacher, which differ in more than the channel count",
                        "pick a module whose output differs only in width, or leave it out")
    if s[ch] == t[ch]:
        return nn.Identity()
    if len(s) == 4:
        return nn.Conv2d(s[ch], t[ch], 1, bias=False)
    return nn.Linear(s[ch], t[ch], bias=False)


class Distillee(nn.Module):
    """The student plus its feature adapters; forward gives (logits, adapted features). One module so
    that DistributedDataParallel synchronizes the adapters' gradients too."""

    def __init__(self, student: nn.Module, names: list[str], adapters: dict[str, nn.Module]):
        super().__init__()
        self.student, self.names = student, names
        self.adapters = nn.ModuleDict({n.replace(".", "/"): adapters[n] for n in names})
        self.tap = FeatureTap(student, names)

    def forward(self, *x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        logits = self.student(*x)
        return logits, [self.adapters[n.replace(".", "/")](self.tap.out.pop(n)) for n in self.names]


def feature_loss(student_feats: list[torch.Tensor], teacher_feats: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([F.mse_loss(s, t.to(s.dtype)) for s, t in zip(student_feats, teacher_feats)]).mean()


@torch.no_grad()
def teacher_outputs(teacher: nn.Module, x: np.ndarray, ds, device: torch.device, names: list[str],
                    cache_features: bool, bs: int = 512) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The teacher's logits for all of `x` (and its features at `names`, fp16, if `cache_features`)."""
    prog = Progress("distill: teacher outputs", len(x), unit="sample")
    cached = names if cache_features else []
    tap = FeatureTap(teacher, cached)
    logits: list[torch.Tensor] = []
    feats: dict[str, list[torch.Tensor]] = {n: [] for n in cached}
    try:
        for i in range(0, len(x), bs):
            logits.append(ds.normalize(x[i:i + bs]).call(teacher, device).cpu())
            for n in feats:
                feats[n].append(tap.out[n].half().cpu())
            prog.update(min(i + bs, len(x)))
    finally:
        tap.remove()
    return torch.cat(logits), [torch.cat(feats[n]) for n in cached]   # a name twice (layer_map): twice


def distill(teacher: nn.Module, student: nn.Module, example, ds, cfg, seed: int, device: torch.device,
            ckpt: Path, task=None) -> tuple[dict, dict] | None:
    """Train `student` from `teacher` on `ds`'s training split (see the module docstring).

    `ckpt` is the resume checkpoint (read if present, written every `cfg.checkpoint_every` steps).
    Returns (state, feature shapes) on rank 0, where state holds the best state_dict, history and
    curves; None on other ranks."""
    if task is None:
        from pipeline.tasks import resolve
        task = resolve("classification")
    pairs = feature_pairs(cfg, teacher, student, example) if cfg.feature_layers else []
    names, t_names = [s for s, _ in pairs], [t for _, t in pairs]   # student modules, the teacher's they match
    adapters, feat_shapes = {}, {}
    if names:
        t_tap, s_tap = FeatureTap(teacher, t_names), FeatureTap(student, names)
        with torch.no_grad():
            teacher(*as_args(example)), student.eval()(*as_args(example))
        t_tap.remove(), s_tap.remove()
        for n, tn in pairs:
            adapters[n] = make_adapter(n, s_tap.out[n].shape, t_tap.out[tn].shape)
            feat_shapes[n] = {"student": list(s_tap.out[n].shape[1:]), "teacher": list(t_tap.out[tn].shape[1:]),
                              "adapter": type(adapters[n]).__name__,
                              "adapter_params": sum(p.numel() for p in adapters[n].parameters())}
            if tn != n:
                feat_shapes[n]["teacher_module"] = tn
        log.info("[distill] feature distillation at %s", ", ".join(
            f"{n}{'' if n == tn else ' <- teacher ' + tn} ({'x'.join(map(str, v['student']))} -> "
            f"{'x'.join(map(str, v['teacher']))}, {v['adapter']})" for (n, tn), v in zip(pairs, feat_shapes.values())))
    torch.manual_seed(seed)  # adapters' init must not shift the student's data order
    wrapped = Distillee(student, names, adapters).to(device)
    teacher.to(device)

    tr_idx, val_idx = split_train_val(len(ds.x_train), cfg.val_fraction, cfg.train_limit, seed)
    x_tr = ds.normalize(ds.x_train[tr_idx]).torch()
    y_tr = torch.from_numpy(ds.y_train[tr_idx])
    feat_bytes = len(tr_idx) * sum(math.prod(feat_shapes[n]["teacher"]) for n in names) * 2
    cache_features = bool(names) and feat_bytes <= cfg.feature_cache_mb * 2**20
    if names and not cache_features:
        log.info("[distill] teacher features need %.0f MB > distill.feature_cache_mb=%d: the teacher runs every "
                 "step", feat_bytes / 2**20, cfg.feature_cache_mb)
    t_logits, t_feats = teacher_outputs(teacher, ds.x_train[tr_idx], ds, device, t_names, cache_features)
    t_live = FeatureTap(teacher, t_names) if names and not cache_features else None
    x_val, y_val = ds.x_train[val_idx], ds.y_train[val_idx]

    steps_per_epoch = math.ceil(len(tr_idx) / cfg.batch_size)
    total = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    opt = torch.optim.SGD(wrapped.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True,
                          weight_decay=cfg.weight_decay)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    rank, world = distributed.rank(), distributed.world_size()
    net: nn.Module = wrapped
    if distributed.active():
        net = nn.parallel.DistributedDataParallel(wrapped, device_ids=[device.index] if device.type == "cuda" else None)
    state = {"step": 0, "best_val": None, "best_state": None, "bad_epochs": 0, "history": [], "losses": [],
             "feature_losses": [], "train_s": 0.0}
    if ckpt.exists():
        saved = torch.load(ckpt, map_location="cpu", weights_only=True)
        wrapped.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        state = saved["state"]
        log.info("[distill] resuming from step %d/%d (%s)", state["step"], total, ckpt.name)
    resumed_from = state["step"]

    def cpu_state(module: nn.Module) -> dict:
        return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}

    if state["step"] == 0 and len(val_idx):
        # The student as it comes in is a candidate too: training never ships something worse than it
        # (when pruning removed little, a short distillation can only lose).
        start = distributed.broadcast(torch_accuracy(student, ds, x_val, y_val, device=device, task=task)
                                      if rank == 0 else float("nan"))
        state["initial_val"], state["best_val"] = start, start
        state["best_state"] = distributed.broadcast(cpu_state(student))
        log.info("[distill] before training: val %s %.4f", task.primary.name, start)

    def save_resume() -> None:
        if rank != 0:
            return
        ckpt.parent.mkdir(exist_ok=True)
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"model": cpu_state(wrapped), "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(), "state": state}, tmp)
        os.replace(tmp, ckpt)

    prog = Progress("distill", total) if rank == 0 else None
    stopped_early = False
    while state["step"] < total and not stopped_early:
        epoch = state["step"] // steps_per_epoch
        # The order of an epoch depends only on (seed, epoch): a resumed run sees the same batches.
        perm = torch.from_numpy(np.random.default_rng([seed, epoch]).permutation(len(tr_idx)))
        wrapped.train()
        t_epoch = time.perf_counter()
        seen = correct = 0    # running training accuracy of this epoch (rank 0's share), for the progress line
        for i in range(state["step"] % steps_per_epoch, steps_per_epoch):
            if state["step"] >= total:
                break
            b = perm[i * cfg.batch_size:(i + 1) * cfg.batch_size][rank::world]
            xb, yb = tuple(t[b].to(device, non_blocking=True) for t in x_tr), y_tr[b].to(device)
            logits, s_feats = net(*xb)
            loss = task.distill_loss(logits, t_logits[b].to(device), yb, cfg.temperature, cfg.alpha)
            if names:
                if cache_features:
                    tf = [f[b].to(device) for f in t_feats]
                else:
                    with torch.no_grad():
                        teacher(*xb)
                    tf = [t_live.out[n] for n in t_names]
                    t_live.out.clear()
                f_loss = feature_loss(s_feats, tf)
                loss = loss + cfg.feature_weight * f_loss
                state["feature_losses"].append(round(float(f_loss.detach()), 5))
            value = float(loss.detach())
            check_finite_loss(value, state["step"] + 1, cfg.lr, "distill")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            state["step"] += 1
            state["losses"].append(round(value, 5))
            if prog:
                seen += len(b)
                if task.batch_metric:
                    correct += len(b) * task.score(logits.detach().float().cpu().numpy(), yb.cpu().numpy())
                prog.update(state["step"], epoch=f"{epoch + 1}/{math.ceil(cfg.epochs)}", loss=state["losses"][-1],
                            **({f"train_{task.primary.name}": correct / seen} if task.batch_metric else {}),
                            lr=sched.get_last_lr()[0])
            if state["step"] % cfg.checkpoint_every == 0:
                save_resume()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        state["train_s"] += time.perf_counter() - t_epoch
        if state["step"] % steps_per_epoch == 0 or state["step"] >= total:
            val_acc = distributed.broadcast(
                torch_accuracy(student, ds, x_val, y_val, device=device, task=task) if len(val_idx) and rank == 0
                else float("nan"))
            state["history"].append({"epoch": epoch + 1, "step": state["step"], "val_accuracy": val_acc,
                                     "train_loss": float(np.mean(state["losses"][-steps_per_epoch:]))})
            log.info("[distill] epoch %d: val %s %.4f", epoch + 1, task.primary.name, val_acc)
            better = state["best_val"] is None or task.primary.worse_by(state["best_val"], val_acc) < 0
            if not len(val_idx) or better:
                state["best_val"], state["bad_epochs"] = val_acc, 0
                state["best_state"] = distributed.broadcast(cpu_state(student))
            else:
                state["bad_epochs"] += 1
                if state["bad_epochs"] >= cfg.patience:
                    log.info("[distill] early stop: no val improvement in %d epochs", cfg.patience)
                    stopped_early = True
            save_resume()
    wrapped.tap.remove()
    if t_live:
        t_live.remove()
    if rank != 0:
        return None
    check_finite_state(state["best_state"], "distill", cfg.lr)
    student.to("cpu").load_state_dict(state["best_state"])
    student.eval()
    return state | {"resumed_from": resumed_from, "stopped_early": stopped_early, "steps_per_epoch": steps_per_epoch,
                    "train_samples": len(tr_idx), "val_samples": len(val_idx), "cache_features": cache_features,
                    "names": names, "world": world}, feat_shapes
