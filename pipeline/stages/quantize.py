"""quantize (one per target): INT8 post-training quantization calibrated on a managed set, with the
numerics the target's engine wants:

- tensorrt: explicit-quantization QDQ ONNX (symmetric int8, zero-point 0, Q/DQ where TensorRT fuses
  them) from nvidia-modelopt's ONNX quantizer; layers kept in float are stored as fp16 when the
  target has fp16_fallback;
- onnxruntime: QDQ ONNX from onnxruntime.quantization.quantize_static;
- tflite: full-integer INT8 .tflite from litert-torch's PT2E quantizer.

Accuracy control (pipeline/compress/sensitivity.py), measured on held-out training samples that are neither
calibration nor test samples, against the float model the artifact was made from:

- sensitivity (`quantize.sensitivity`): every Conv/Gemm (ONNX) or Conv/Linear (TFLite) layer is
  left in float alone once and the INT8 output error recorded; ranked in stage.json. For TensorRT the
  ranking uses ONNX Runtime's quantizer with symmetric activations as a proxy (one modelopt run costs
  ~10 s in a child process); the fallback itself always re-quantizes with modelopt.
- fallback (`quantize.fallback`): if the INT8 drop exceeds the budget, the most sensitive layers stay
  in float one by one until it does not, or the stage says the budget cannot be met and with what drop.

Depthwise-safe PTQ (pipeline/dfq.py, torch models): `quantize.equalize` (cross-layer equalization) and
`quantize.bias_correction` transform a BatchNorm-folded copy of the float model before the backend
quantizes it; drops are still measured against the untransformed float model. `quantize.per_channel =
false` gives per-tensor weights (ONNX Runtime, TFLite) for accelerators that need them, which is where
equalization matters most.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from pipeline import backends
from pipeline.backends.base import QuantizeJob
from pipeline.compress import dfq, sensitivity
from pipeline.compress.output_tail import OUTPUT_TAIL
from pipeline.config import Target
from pipeline.errors import UserError
from pipeline.runner import Context, Progress, Stage, log



class QuantizeStage(Stage):
    def __init__(self, target: Target, source: str):
        self.target = target
        self.name = f"quantize-{target.name}"
        self.inputs = ("load", source)
        self.source = source

    def method(self, ctx: Context) -> str:
        return ctx.config.quantize.method or self.target.calibration_method

    def budget(self, ctx: Context) -> float:
        """Allowed INT8 accuracy drop vs the float model (quantize.max_drop, else the target's budget)."""
        q = ctx.config.quantize
        return self.target.budgets.max_accuracy_drop if q.max_drop is None else q.max_drop

    config_sections = ("quantize",)

    def config_slice(self, ctx: Context) -> dict:
        _, manifest, _ = ctx.calibration_set()
        t, engine = self.target, backends.get(self.target.backend)
        return {**self.sections(ctx), "backend": t.backend, "method": self.method(ctx), "io_dtype": t.io_dtype,
                "float_precision": engine.float_precision(t), "max_drop": self.budget(ctx), "seed": ctx.config.seed,
                "calibration_set": {"name": manifest["name"], "sha256": manifest["sha256"]},
                "dynamic_batch": engine.dynamic_batch(t), "isa": list(t.device.isa)}

    def run(self, ctx: Context, out: Path) -> dict:
        t, ds, q = self.target, ctx.data, ctx.config.quantize
        x_cal, manifest, man_path = ctx.calibration_set()
        calib = ds.normalize(x_cal)
        engine = backends.get(t.backend)
        dest = out / engine.int8_file
        budget = self.budget(ctx)
        held = sensitivity.held_out(ds, manifest.get("indices", []), q.heldout_samples, ctx.config.seed + 2)
        engine.check_target(t, q)
        # scratch inside the run folder (never the system temp folder): a killed run leaves nothing behind
        log.info("[%s] INT8 PTQ for %s (%s): calibrating on %d samples of %s (%s), then scoring INT8 vs float on %d "
                 "held-out training samples", self.name, t.name, t.backend, len(x_cal), manifest["name"],
                 self.method(ctx), len(held.y))
        with tempfile.TemporaryDirectory(prefix=".scratch-", dir=out) as tmp:
            eng = self._engine(ctx, calib, held, dest, Path(tmp))
            meta = {"meta": eng.build(())}
            log.info("[%s] INT8 artifact built (%s); scoring it", self.name, dest.name)

            def shipped(float_layers: Sequence[str]) -> np.ndarray:
                """Re-quantize the shipped artifact with these float layers; its held-out logits."""
                meta["meta"] = eng.build(float_layers)
                return eng.logits(dest)

            task = ctx.task
            all_int8 = sensitivity.score(eng.logits(dest), eng.reference, held.y, task)
            float_acc = task.score(eng.reference, held.y)
            over = task.primary.worse_by(float_acc, all_int8["accuracy"]) > budget
            ranked = None
            first = task.fallback_first(eng.output_layers)
            if q.sensitivity or (q.fallback and over and not first):
                prog = Progress(self.name, len(eng.layers), unit="sensitivity layer")
                ranked = {**sensitivity.rank(eng.layers, eng.proxy, eng.reference, held.y, progress=prog.update,
                                             task=task),
                          "measured_with": eng.proxy_note}
            fb = None
            if q.fallback:
                ranked_order = [r["layer"] for r in ranked["ranking"]] if ranked else []
                order = first + [layer for layer in ranked_order if layer not in first]
                why = {layer: f"{task.name}: the ops after the head's last layers (decode)" if layer == OUTPUT_TAIL
                       else f"{task.name}: a head output layer" for layer in first}
                fb = sensitivity.fallback(order, shipped, eng.reference, held.y, budget, q.max_float_layers,
                                          all_int8=all_int8, task=task, why=why)
            drop = fb["accuracy_drop"] if fb else task.primary.worse_by(float_acc, all_int8["accuracy"])
            float_layers = fb["float_layers"] if fb else []
            log.info("[%s] INT8 %s drop %.4f vs the float model on %d held-out training samples (budget %.4f)%s",
                     self.name, task.primary.name, drop, len(held.y), budget,
                     f"; kept in float: {', '.join(f['layer'] for f in float_layers)}" if float_layers else "")
            if drop > budget:
                log.warning("[%s] the INT8 %s budget cannot be met%s: drop %.4f > %.4f", self.name, task.primary.name,
                            f" with up to {q.max_float_layers} float layers" if q.fallback else " (fallback is off)",
                            drop, budget)
        return {
            "backend": t.backend, "method": self.method(ctx), "file": dest.name,
            "calibration": {"name": manifest["name"], "manifest": man_path.name, "sha256": manifest["sha256"],
                            "size": manifest["size"], "seed": manifest["seed"], "source": manifest["source"]["data"]},
            "heldout": {"samples": int(len(held.y)), "split": "train", "excludes": "the calibration samples",
                        "seed": ctx.config.seed + 2},
            "metric": task.primary.as_dict(),
            "float_accuracy": float_acc,
            "accuracy_drop_vs_float": drop,
            "budget": budget,
            "budget_met": drop <= budget,
            "float_layers": float_layers,
            "float_precision": engine.float_precision(t),
            "fallback": fb,
            "sensitivity": ranked,
            "depthwise_safe": eng.prepared,
            "engine_meta": meta["meta"],
        }

    def _engine(self, ctx: Context, calib: np.ndarray, held: sensitivity.HeldOut, dest: Path, tmp: Path):
        """The engine's Quantizer for this run: the float model, its dfq-transformed copy when asked for."""
        t, ds, q = self.target, ctx.data, ctx.config.quantize
        engine = backends.get(t.backend)
        spec = ctx.model_spec()
        example = ctx.example()
        dfq_on = q.equalize or q.bias_correction
        if spec.kind == "onnx" and dfq_on:
            raise UserError(f"quantize.equalize / quantize.bias_correction transform a torch model; "
                            f"{spec.path.name} is ONNX", "pass FILE.py:FACTORY or MODEL.pt2, or turn both off")
        # The float model as the source stage wrote it (the reference of every drop), and the one the engine
        # quantizes: the same, or a copy transformed by pipeline/compress/dfq.py.
        needs_torch = dfq_on or engine.quantizes_torch or engine.dynamic_batch(t)
        source = ctx.torch_model(self.source) if spec.kind != "onnx" and needs_torch else None
        to_quantize, prepared = source, None
        if dfq_on:
            to_quantize, prepared = dfq.prepare(source, torch.from_numpy(calib.single), q.equalize, q.bias_correction,
                                                q.per_channel)
            done = ([f"{len(prepared['equalize']['pairs'])} layer pairs equalized"] if q.equalize else []) + \
                ([f"{prepared['bias_correction']['layers']} biases corrected"] if q.bias_correction else [])
            log.info("[%s] depthwise-safe PTQ: %s", self.name, ", ".join(done))
        job = QuantizeJob(target=t, dest=dest, tmp=tmp, calib=calib, held_x=held.x, method=self.method(ctx),
                          per_channel=q.per_channel, onnx_source=ctx.artifact(self.source, "model.onnx"),
                          source=source, to_quantize=to_quantize, example=example, model_name=spec.path.name,
                          dynamic_batch=engine.dynamic_batch(t), prepared=prepared, isa_aware=q.isa_aware,
                          dynamic=ctx.dynamic())
        return engine.quantizer(job)
