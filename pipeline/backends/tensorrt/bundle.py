"""The TensorRT part of a hand-off bundle: build_engine.sh (trtexec, TensorRT 10 and 11 flags),
build_engine.json (the defaults build_engine.py reads), and the device files copied beside them."""
from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any, Sequence

from pipeline.backends.onnxruntime import INPUT_NAME
from pipeline.backends.tensorrt.compat import DEFAULT_TRT_VERSION
from pipeline.errors import UserError

BUILD_OPTS: dict[str, Any] = {
    # engine build: the build_engine / trtexec options
    "int8": True, "fp16": True, "workspace_mb": 1024, "timing_cache": "timing.cache", "dla_core": None,
    "gpu_fallback": True, "min_opt_max_batch": None, "strongly_typed": False,
    "profiles": None,     # {input: [min, opt, max] shapes}: the run's --dynamic axes (or the batch profile)
    # the target's [tensorrt] table (config.TensorRTOptions): expected toolchain, recorded in the report;
    # fp16_fallback is the default of fp16 when fp16 is not given
    "version": DEFAULT_TRT_VERSION, "jetpack": None, "fp16_fallback": True, "max_batch": 1,
    # golden check (defaults match the hand-off manifest's TensorRT tolerances) and timing
    "input_shape": [1, 1, 28, 28], "golden": "golden.npz", "atol": 0.25, "rtol": 0.0, "min_top1_agreement": 0.9,
    "warmup": 50, "runs": 1000, "warmup_ms": 500, "report": "device_report.json",
}
def _shape_arg(name: str, batch: int, sample: Sequence[int]) -> str:
    return f"{name}:{'x'.join(str(d) for d in (batch, *sample))}"


def _profile_flags(profiles: dict) -> list[str]:
    """trtexec --minShapes/--optShapes/--maxShapes, every input of the profile in each."""
    for name, shapes in profiles.items():
        if len(shapes) != 3 or not all(1 <= a <= b <= c for a, b, c in zip(*shapes)):
            raise UserError(f"the optimization profile of input '{name}' is {shapes}",
                            "give [min, opt, max] shapes with min <= opt <= max on every axis")
    return [f"--{k}Shapes=" + ",".join(_shape_arg(n, s[i][0], s[i][1:]) for n, s in profiles.items())
            for i, k in enumerate(("min", "opt", "max"))]


def build_script(onnx_name: str, plan_name: str, opts: dict) -> dict[str, str]:
    """Text files of the on-device bundle: build_engine.sh (trtexec) and build_engine.json (the defaults
    of build_engine.py, which `DEVICE_FILES` are copied beside: the TensorRT Python API build + golden
    check + latency report; needs only tensorrt, numpy and torch or cuda-python).

    `opts` overrides BUILD_OPTS (unknown keys are an error). The files expect the ONNX, the golden
    .npz and (optionally) the timing cache next to them.
    """
    unknown = sorted(set(opts) - set(BUILD_OPTS))
    if unknown:
        raise UserError(f"unknown engine build option(s): {', '.join(unknown)}", f"use {', '.join(BUILD_OPTS)}")
    o = {**BUILD_OPTS, **opts}
    o["fp16"] = opts.get("fp16", o["fp16_fallback"])
    if o["min_opt_max_batch"] is not None and len(o["min_opt_max_batch"]) != 3:
        raise UserError(f"min_opt_max_batch must be three numbers, got {o['min_opt_max_batch']}",
                        "give [min, opt, max] batch sizes")
    sample = list(o["input_shape"])[1:]
    weak = " ".join((["--int8"] if o["int8"] else []) + (["--fp16"] if o["fp16"] else []))

    flags = [f"--onnx={shlex.quote(onnx_name)}", f"--saveEngine={shlex.quote(plan_name)}", "$PRECISION"]
    flags += [f"--memPoolSize=workspace:{int(o['workspace_mb'])}M",
              f"--timingCacheFile={shlex.quote(str(o['timing_cache']))}"]
    if o["dla_core"] is not None:
        flags += [f"--useDLACore={int(o['dla_core'])}"] + (["--allowGPUFallback"] if o["gpu_fallback"] else [])
    if o["profiles"]:
        flags += _profile_flags(o["profiles"])
    elif o["min_opt_max_batch"] is not None:
        lo, opt, hi = o["min_opt_max_batch"]
        flags += [f"--minShapes={_shape_arg(INPUT_NAME, lo, sample)}", f"--optShapes={_shape_arg(INPUT_NAME, opt, sample)}",
                  f"--maxShapes={_shape_arg(INPUT_NAME, hi, sample)}"]
    flags += ["--profilingVerbosity=detailed", "--dumpLayerInfo", "--exportLayerInfo=layer_info.json",
              "--separateProfileRun", "--dumpProfile", "--exportProfile=profile.json",
              f"--warmUp={int(o['warmup_ms'])}", f"--iterations={int(o['runs'])}", f"--avgRuns={min(int(o['runs']), 100)}",
              "--duration=0", "--exportTimes=times.json"]
    sh = "\n".join([
        "#!/usr/bin/env bash",
        "# Build and time the TensorRT engine ON this device with trtexec (written by edge-compress).",
        f"# Expected toolchain: TensorRT {o['version']}" + (f", JetPack {o['jetpack']}" if o["jetpack"] else "") + ".",
        "# Engines are specific to the GPU and TensorRT version that build them: run this on the target.",
        "# Extra trtexec flags can be appended: ./build_engine.sh --verbose",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        'TRTEXEC="${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}"',
        "# TensorRT 10 takes precision flags; TensorRT 11 removed them (strongly typed: precision from the QDQ ONNX).",
        f'PRECISION="{weak}"',
        'if ! "$TRTEXEC" --help 2>&1 | grep -q -- "--int8"; then PRECISION=""; '
        + ('elif true; then PRECISION="--stronglyTyped"; ' if o["strongly_typed"] else "") + "fi",
        '"$TRTEXEC" \\',
        *[f"  {f} \\" for f in flags],
        '  "$@" 2>&1 | tee trtexec.log',
        "",
    ])

    defaults = {"onnx": onnx_name, "plan": plan_name, **{k: o[k] for k in (
        "int8", "fp16", "workspace_mb", "timing_cache", "dla_core", "gpu_fallback", "strongly_typed", "golden", "atol", "rtol",
        "min_top1_agreement", "warmup", "runs", "report")},
        "min_opt_max_batch": list(o["min_opt_max_batch"]) if o["min_opt_max_batch"] is not None else None,
        "profiles": o["profiles"],
        "target": {"tensorrt": str(o["version"]), "jetpack": o["jetpack"], "max_batch": int(o["max_batch"])}}
    return {"build_engine.sh": sh, "build_engine.json": json.dumps(defaults, indent=2) + "\n"}


def device_files() -> dict[str, Path]:
    """Files copied verbatim into a TensorRT bundle: the device half and what it imports."""
    root = Path(__file__).resolve().parents[2]
    return {"build_engine.py": root / "bundle" / "build_engine.py", "devicekit.py": root / "bundle" / "devicekit.py",
            "hashing.py": root / "hashing.py"}
