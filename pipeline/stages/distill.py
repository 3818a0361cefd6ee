"""distill: the teacher (the loaded model) teaches the pruned student (the loop: pipeline/compress/distill.py).

Reads load/model.pt and prune/model.pt, trains with the resume checkpoint in runs/<id>/.resume/,
writes the best student as model.pt / model.pt2 / model.onnx. Under torchrun every rank runs it.
"""
from __future__ import annotations

from pathlib import Path

import torch

from pipeline import models
from pipeline.backends import onnxruntime as ort_backend
from pipeline.compress.distill import distill, resolve_device
from pipeline.runner import Context, Stage


class DistillStage(Stage):
    name = "distill"
    inputs = ("load", "prune")

    config_sections = ("distill",)

    def config_slice(self, ctx: Context) -> dict:
        return {**self.sections(ctx), "seed": ctx.config.seed, **({"dynamic": ctx.config.dynamic} if ctx.config.dynamic else {})}

    def resume_path(self, ctx: Context) -> Path:
        return ctx.run_dir / ".resume" / f"distill-{self.fingerprint(ctx)[:16]}.pt"

    def run(self, ctx: Context, out: Path) -> dict:
        cfg, ds, seed = ctx.config.distill, ctx.data, ctx.config.seed
        spec = ctx.model_spec()
        device = resolve_device(cfg.device)
        torch.manual_seed(seed)
        teacher = models.load_model(spec, ctx.artifact("load", "model.pt")).eval()
        student = models.load_model(spec, ctx.artifact("prune", "model.pt"))
        example = ctx.example()

        ckpt = self.resume_path(ctx)
        trained = distill(teacher, student, example, ds, cfg, seed, device, ckpt, task=ctx.task)
        if trained is None:       # a torchrun rank other than 0: rank 0 writes the outputs
            return {}
        state, feat_shapes = trained
        models.save_model(student, out / "model.pt")
        models.export_pt2(student, example, out / "model.pt2")
        ort_backend.export_onnx(student, example, out / "model.onnx", dynamic=ctx.dynamic())
        ckpt.unlink(missing_ok=True)
        params, macs = models.count_params(student), models.count_macs(student, example)
        fl = state["feature_losses"]
        return {
            "steps": state["step"], "steps_per_epoch": state["steps_per_epoch"], "train_samples": state["train_samples"],
            "val_samples": state["val_samples"], "best_val_accuracy": state["best_val"], "val_metric": ctx.task.primary.name,
            "initial_val_accuracy": state.get("initial_val"), "history": state["history"],
            "loss_curve": state["losses"][:: max(1, len(state["losses"]) // 200)],
            "resumed_from_step": state["resumed_from"], "stopped_early": state["stopped_early"],
            "train_s": round(state["train_s"], 2),
            "train_ms_per_step": round(1000 * state["train_s"] / max(1, state["step"]), 2),
            "teacher_logits_cached": True, "processes": state["world"], "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "features": {"layers": feat_shapes, "weight": cfg.feature_weight, "teacher_features_cached": state["cache_features"],
                         "loss_curve": fl[:: max(1, len(fl) // 200)],
                         "adapters": "trained with the student, not part of the shipped model"} if state["names"] else None,
            "params": params, "macs": macs,
            "artifacts": [{"name": "distilled", "file": "model.onnx", "backend": "onnxruntime", "precision": "fp32",
                           "params": params, "macs": macs}],
        }
