"""distill: the teacher (the loaded model) teaches the pruned student.

Loss = alpha * T^2 * KL(softmax(s/T) || softmax(t/T)) + (1 - alpha) * CE(s, y). SGD with Nesterov
momentum, linear warm-up then cosine decay, validation on a held-out slice of the training split
each epoch (never the test split), best checkpoint kept, early stopping. Inputs are not augmented,
so the teacher's logits are computed once. A resume checkpoint is written every
`checkpoint_every` steps outside the stage's temporary folder: a killed run continues from it.

Under torchrun the stage runs on every rank with DistributedDataParallel: each global batch of
`batch_size` is split across the ranks, so the optimisation matches a single process; rank 0 alone
validates (its decision is broadcast), checkpoints and writes the outputs.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline import distributed, models
from pipeline.backends import onnxruntime as ort_backend
from pipeline.runner import Context, Progress, Stage, log
from pipeline.stages.load import model_spec
from pipeline.stages.evaluate import torch_accuracy


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            temperature: float, alpha: float) -> torch.Tensor:
    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits / t, 1), F.log_softmax(teacher_logits / t, 1),
                    reduction="batchmean", log_target=True) * (t * t)
    return alpha * soft + (1 - alpha) * F.cross_entropy(student_logits, labels)


def split_train_val(n: int, val_fraction: float, limit: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction))
    val, train = perm[:n_val], perm[n_val:]
    if limit:
        train = train[:limit]
        val = val[: max(1, min(len(val), limit // 10))] if n_val else val
    return np.sort(train), np.sort(val)


@torch.no_grad()
def teacher_logits(teacher: torch.nn.Module, x: np.ndarray, ds, bs: int = 512) -> torch.Tensor:
    prog = Progress("distill: teacher logits", len(x), unit="sample")
    outs = []
    for i in range(0, len(x), bs):
        outs.append(teacher(torch.from_numpy(ds.normalize(x[i:i + bs]))))
        prog.update(min(i + bs, len(x)))
    return torch.cat(outs)


class DistillStage(Stage):
    name = "distill"
    inputs = ("load", "prune")

    def config_slice(self, ctx: Context) -> dict:
        return {**ctx.config.distill.model_dump(exclude={"checkpoint_every"}), "seed": ctx.config.seed}

    def resume_path(self, ctx: Context) -> Path:
        return ctx.run_dir / ".resume" / f"distill-{self.fingerprint(ctx)[:16]}.pt"

    def run(self, ctx: Context, out: Path) -> dict:
        cfg, ds, seed = ctx.config.distill, ctx.data, ctx.config.seed
        spec = model_spec(ctx)
        torch.manual_seed(seed)
        teacher = models.load_model(spec, ctx.artifact("load", "model.pt")).eval()
        student = models.load_model(spec, ctx.artifact("prune", "model.pt"))
        example = torch.from_numpy(ds.normalize(ds.x_test[:1]))

        tr_idx, val_idx = split_train_val(len(ds.x_train), cfg.val_fraction, cfg.train_limit, seed)
        x_tr = torch.from_numpy(ds.normalize(ds.x_train[tr_idx]))
        y_tr = torch.from_numpy(ds.y_train[tr_idx])
        t_logits = teacher_logits(teacher, ds.x_train[tr_idx], ds)
        x_val, y_val = ds.x_train[val_idx], ds.y_train[val_idx]

        steps_per_epoch = math.ceil(len(tr_idx) / cfg.batch_size)
        total = max(1, math.ceil(cfg.epochs * steps_per_epoch))
        warmup = int(cfg.warmup_epochs * steps_per_epoch)
        opt = torch.optim.SGD(student.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True,
                              weight_decay=cfg.weight_decay)

        def lr_at(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
        rank, world = distributed.rank(), distributed.world_size()
        net = student
        if distributed.active():
            net = torch.nn.parallel.DistributedDataParallel(student)
        state = {"step": 0, "best_val": -1.0, "best_state": None, "bad_epochs": 0, "history": [], "losses": []}
        ckpt = self.resume_path(ctx)
        if ckpt.exists():
            saved = torch.load(ckpt, map_location="cpu", weights_only=True)
            student.load_state_dict(saved["model"])
            opt.load_state_dict(saved["optimizer"])
            sched.load_state_dict(saved["scheduler"])
            state = saved["state"]
            log.info("[distill] resuming from step %d/%d (%s)", state["step"], total, ckpt.name)
        resumed_from = state["step"]

        def save_resume() -> None:
            if rank != 0:
                return
            ckpt.parent.mkdir(exist_ok=True)
            tmp = ckpt.with_suffix(".tmp")
            torch.save({"model": student.state_dict(), "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(), "state": state}, tmp)
            os.replace(tmp, ckpt)

        prog = Progress("distill", total) if rank == 0 else None
        stopped_early = False
        while state["step"] < total and not stopped_early:
            epoch = state["step"] // steps_per_epoch
            # The order of an epoch depends only on (seed, epoch): a resumed run sees the same batches.
            perm = torch.from_numpy(np.random.default_rng([seed, epoch]).permutation(len(tr_idx)))
            student.train()
            for i in range(state["step"] % steps_per_epoch, steps_per_epoch):
                if state["step"] >= total:
                    break
                b = perm[i * cfg.batch_size:(i + 1) * cfg.batch_size][rank::world]
                loss = kd_loss(net(x_tr[b]), t_logits[b], y_tr[b], cfg.temperature, cfg.alpha)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                state["step"] += 1
                state["losses"].append(round(float(loss.detach()), 5))
                if prog:
                    prog.update(state["step"], epoch=f"{epoch + 1}/{math.ceil(cfg.epochs)}", loss=float(loss.detach()),
                                lr=sched.get_last_lr()[0])
                if state["step"] % cfg.checkpoint_every == 0:
                    save_resume()
            if state["step"] % steps_per_epoch == 0 or state["step"] >= total:
                val_acc = distributed.broadcast(
                    torch_accuracy(student, ds, x_val, y_val) if len(val_idx) and rank == 0 else float("nan"))
                state["history"].append({"epoch": epoch + 1, "step": state["step"], "val_accuracy": val_acc,
                                         "train_loss": float(np.mean(state["losses"][-steps_per_epoch:]))})
                log.info("[distill] epoch %d: val accuracy %.4f", epoch + 1, val_acc)
                if not len(val_idx) or val_acc > state["best_val"]:
                    state["best_val"], state["bad_epochs"] = val_acc, 0
                    state["best_state"] = distributed.broadcast({k: v.clone() for k, v in student.state_dict().items()})
                else:
                    state["bad_epochs"] += 1
                    if state["bad_epochs"] >= cfg.patience:
                        log.info("[distill] early stop: no val improvement in %d epochs", cfg.patience)
                        stopped_early = True
                save_resume()
        if rank != 0:
            return {}
        student.load_state_dict(state["best_state"])
        student.eval()
        models.save_model(student, out / "model.pt")
        models.export_pt2(student, example, out / "model.pt2")
        ort_backend.export_onnx(student, example, out / "model.onnx")
        ckpt.unlink(missing_ok=True)
        params, macs = models.count_params(student), models.count_macs(student, example)
        return {
            "steps": state["step"], "steps_per_epoch": steps_per_epoch, "train_samples": len(tr_idx),
            "val_samples": len(val_idx), "best_val_accuracy": state["best_val"], "history": state["history"],
            "loss_curve": state["losses"][:: max(1, len(state["losses"]) // 200)],
            "resumed_from_step": resumed_from, "stopped_early": stopped_early,
            "teacher_logits_cached": True, "processes": world, "params": params, "macs": macs,
            "artifacts": [{"name": "distilled", "file": "model.onnx", "backend": "onnxruntime", "precision": "fp32",
                           "params": params, "macs": macs}],
        }
