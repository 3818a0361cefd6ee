"""What the handoff stage writes for people and for a device without this repository: the device kit
(run_on_device.py and what it imports, infer.py, infer.cpp for TensorRT), the labelled evaluation slice,
the bundle's README and its model card."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

BUNDLE_SRC = Path(__file__).resolve().parents[1] / "bundle"
# shipped verbatim in every target folder; numpy and the device's runtime are all they import
DEVICE_KIT = {"run_on_device.py": BUNDLE_SRC / "run_on_device.py", "devicekit.py": BUNDLE_SRC / "devicekit.py",
              "preprocess.py": BUNDLE_SRC / "preprocess.py", "infer.py": BUNDLE_SRC / "infer.py",
              "postprocess.py": BUNDLE_SRC / "postprocess.py",
              "hashing.py": BUNDLE_SRC.parent / "hashing.py"}
EVAL_FILE = "eval.npz"
RUNTIME = {"onnxruntime": "onnxruntime", "tflite": "ai-edge-litert (or tflite-runtime)",
           "tensorrt": "TensorRT's Python bindings (JetPack: python3-libnvinfer) and cuda-python or torch"}


def kit_fingerprint() -> dict:
    """sha256 of every shipped device file: a changed kit makes the handoff stage run again."""
    from pipeline.hashing import sha256_file
    return {n: sha256_file(p) for n, p in sorted({**DEVICE_KIT, "infer.cpp": BUNDLE_SRC / "infer.cpp"}.items())}


def write_device_kit(tdir: Path, backend: str) -> None:
    for name, src in DEVICE_KIT.items():
        if not (tdir / name).exists():          # a TensorRT bundle already has devicekit.py / hashing.py
            shutil.copyfile(src, tdir / name)
    if backend == "tensorrt":
        shutil.copyfile(BUNDLE_SRC / "infer.cpp", tdir / "infer.cpp")


def eval_arrays(raw, positional: bool) -> dict:
    """The stored (not yet preprocessed) inputs as npz arrays: `x`, or `x__<name>` per named input."""
    if positional:
        return {"x": raw.single}
    return {f"x__{k}": v for k, v in raw.items()}


def write_eval_slice(tdir: Path, ds, n: int, runner, task) -> dict | None:
    """eval.npz: the first n test samples as stored, with their targets, and the host's metrics on them
    (the deliverable run here on the same samples, preprocessed by the same code)."""
    n = min(n, len(ds.y_test))
    if n == 0:
        return None
    raw = ds.x_test[:n]
    np.savez_compressed(tdir / EVAL_FILE, **eval_arrays(raw, raw.positional), y=ds.y_test[:n])
    metrics = task.evaluate(runner.run(ds.normalize(raw)), ds.y_test[:n])
    return {"file": EVAL_FILE, "samples": n, "split": "test", "first": n, "metric": task.primary.name,
            "host_value": metrics[task.primary.name], "host_metrics": metrics}


README = """# {model} for {device} ({target})

Hand-off from edge-compress {version}. This folder runs on the device **without the edge-compress
repository**: Python 3.9+, numpy and {runtime} are all it needs.

    python3 run_on_device.py verify      # sha256 of every file against manifest.json, outputs vs golden.npz
    python3 run_on_device.py bench       # + accuracy on {eval_n} labelled samples and latency: device_report.json
    python3 infer.py                     # minimal inference (the runtime's calls spelled out){cpp}

Back on the build machine, merge the device report into the run's report (its sha256s must match
this bundle's), or let edge-compress do the whole round trip over SSH:

    python -m pipeline report runs/<run-id> --device-report device_report.json
    python -m pipeline bench --remote user@device --bundle runs/<run-id>/handoff --target {target}

## Budgets of this target
{budgets}

## Feeding the model
- input `{input_name}`: {input_dtype} {input_shape}, layout {layout}
- preprocessing (as code: `preprocess.py`, the same function the build machine used): {preprocessing}{quant_in}
- output `{output_name}`: {output_dtype} {output_shape}: {output_meaning}{quant_out}

## Quantization
{quantization}

## Files
{files}

## Expected results
Host accuracy ({metric}): {accuracy} on {samples} test samples; {eval_line}. `golden.npz` holds
{golden} preprocessed inputs and the host outputs; a device build should agree within the tolerances
in `manifest.json` ("golden"). See `MODEL_CARD.md` for intended use and limitations.
{backend_notes}"""

MODEL_CARD = """# Model card: {model} ({target})

**Model.** {model}, compressed by edge-compress {version}: {steps}. Deliverable `{deliverable}`
({precision}, {size_kb:.0f} KB) for {device}.

**Intended use.** {task} of inputs like the training data ({inputs}) on {device}. Not validated for
inputs from another distribution (other sensors, resolutions, lighting, languages) without measuring
it on a labelled sample of them first (`eval.npz` shows the format `run_on_device.py bench` reads).

**Data.** `{data}`: {train} training samples (teacher training, pruning, distillation); calibrated on `{calibration}`
({calib_n} samples, seed {seed}); evaluated on {test} test samples. Labels: {labels}.

**Metrics.** {metric} ({direction}): teacher {teacher}, this deliverable {accuracy} on the host
({drop}). Budget: at most {budget} worse than the teacher. Device figures: not in this card; they come
from `run_on_device.py bench` on the device (`eval` and `latency_ms` in its report).

**Limitations.** INT8 post-training quantization can shift rare classes more than the average
figure shows; layers kept in float: {float_layers}. Host accuracy and latency were measured on
{host} ({host_isa}); {isa_line}

**Licence.** The model's licence is its owner's{licence}. edge-compress adds no terms to it.
"""


def budgets_lines(t) -> str:
    b = t.budgets
    return "\n".join([f"- accuracy: at most {b.max_accuracy_drop} worse than the teacher (task metric's units)",
                      f"- latency: p50 {b.latency_ms} ms on the device" if b.latency_ms else "- latency: no budget",
                      f"- size: {b.max_size_mb} MB" if b.max_size_mb else "- size: no budget"])


def quantization_lines(backend: str, quant: dict, float_layers: list[dict]) -> str:
    lines = []
    meta = quant.get("engine_meta") or {}
    if backend == "tensorrt":
        lines.append("- The INT8 scales are explicit Q/DQ nodes in the ONNX: TensorRT needs no INT8 calibration "
                     "cache and no calibration data on the device.")
    if meta.get("isa"):
        lines.append(f"- Settings for the target's instruction sets ({', '.join(meta['isa'].get('target') or [])}): "
                     f"{meta['isa'].get('why')}")
    if not float_layers:
        lines.append("- No layer was kept in float.")
    for f in float_layers:
        lines.append(f"- kept in {quant.get('float_precision', 'float')}: `{f['layer']}` ({f['reason']})")
    return "\n".join(lines)
