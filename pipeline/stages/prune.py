"""prune: structured channel pruning of the loaded model to a budget (algorithm: pipeline/compress/prune.py)."""
from __future__ import annotations

from pathlib import Path

import torch

from pipeline import models
from pipeline.backends import onnxruntime as ort_backend
from pipeline.compress.prune import (KDSettings, Setup, calibration_batches, check_onnx, check_pruned, layer_channels,
                                     protected_layers, prune_to_budget)
from pipeline.runner import Context, Stage


def round_to(ctx: Context) -> int:
    """The largest round_to among the targets (a pruned model shared by targets must suit all)."""
    return ctx.config.prune.round_to or max(t.round_to for t in ctx.targets)


class PruneStage(Stage):
    name = "prune"
    inputs = ("load",)

    config_sections = ("prune",)

    def config_slice(self, ctx: Context) -> dict:
        c = {**self.sections(ctx), "round_to": round_to(ctx), "seed": ctx.config.seed,
             **({"dynamic": ctx.config.dynamic} if ctx.config.dynamic else {})}
        if ctx.config.prune.iterative_steps > 1:
            d = ctx.config.distill
            c["step_kd"] = {"batch_size": d.batch_size, "temperature": d.temperature, "alpha": d.alpha}
        if ctx.config.prune.budget == "latency":
            c["threads"] = min(t.threads for t in ctx.targets)
        return c

    def run(self, ctx: Context, out: Path) -> dict:
        cfg, ds, seed = ctx.config.prune, ctx.data, ctx.config.seed
        spec = ctx.model_spec()
        torch.manual_seed(seed)
        teacher = models.load_model(spec, ctx.artifact("load", "model.pt"))
        example = ctx.example()
        base_macs, base_params = models.count_macs(teacher, example), models.count_params(teacher)
        ignored = protected_layers(teacher, example, cfg, head_layers=ctx.task.head_layers)
        setup = Setup(cfg.criterion, round_to(ctx), ignored, cfg.global_pruning, cfg.max_layer_ratio,
                      calibration_batches(ds, seed, 256, 64))
        kd = None
        if cfg.iterative_steps > 1:
            d = ctx.config.distill
            kd = KDSettings(calibration_batches(ds, seed + 1, cfg.step_kd_batches * d.batch_size, d.batch_size),
                            d.temperature, d.alpha, loss_fn=ctx.task.distill_loss)
        threads = min(t.threads for t in ctx.targets)
        latency = None
        if cfg.budget == "latency" and cfg.latency_remote:
            from pipeline.remote import latency_on_device
            on_device = latency_on_device(cfg.latency_remote, cfg.latency_remote_python, threads, cfg.latency_runs, out)

            def latency(m):
                return on_device(m, example)
        student, search_record = prune_to_budget(teacher, example, cfg, setup, threads, kd, latency=latency,
                                                 scratch=out)
        check_pruned(teacher, student, example)
        macs, params = models.count_macs(student, example), models.count_params(student)
        models.save_model(student, out / "model.pt")
        models.export_pt2(student, example, out / "model.pt2")
        onnx_meta = ort_backend.export_onnx(student, example, out / "model.onnx", dynamic=ctx.dynamic())
        check_onnx(onnx_meta)
        before, after = layer_channels(teacher), layer_channels(student)
        return {
            "criterion": cfg.criterion, "round_to": round_to(ctx), "ignored_layers": ignored,
            "excluded_groups": search_record.get("excluded_groups", []),
            "allocation": "global" if cfg.global_pruning else "uniform",
            "macs_before": base_macs, "macs_after": macs, "macs_fraction": macs / base_macs,
            "macs_goal_fraction": 1 - cfg.macs_reduction if cfg.budget == "macs" else None,
            "params_before": base_params, "params_after": params, "params_fraction": params / base_params,
            "channels": {n: [before[n], after.get(n)] for n in before},
            "search": search_record, "onnx_max_abs_diff": onnx_meta["max_abs_diff_vs_torch"],
            "params": params, "macs": macs,
            "artifacts": [{"name": "pruned", "file": "model.onnx", "backend": "onnxruntime", "precision": "fp32",
                           "params": params, "macs": macs}],
        }
