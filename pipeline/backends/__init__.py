"""Inference engines, one module each: `onnxruntime`, `tflite`, `tensorrt`.

Each is imported lazily, so a missing engine is one clear message when it is needed, not an
ImportError at start. Every backend module offers `available() -> (bool, reason)` and a
`Runner(path, threads=...)` whose `run(x)` takes normalized float32 NCHW input and returns float32
logits, plus the build/quantize functions that only it can do.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from pipeline.errors import UserError

BACKENDS = ("onnxruntime", "tflite", "tensorrt")
INSTALL_HINT = {
    "onnxruntime": "pip install -r requirements.txt (onnxruntime)",
    "tflite": "pip install -r requirements.txt (ai-edge-litert, litert-torch)",
    "tensorrt": "run on a machine with an NVIDIA GPU and TensorRT (JetPack on a Jetson)",
}


def get(name: str) -> ModuleType:
    """The backend module (imports only our module; the engine itself is imported on use)."""
    if name not in BACKENDS:
        raise UserError(f"unknown backend '{name}'", f"use one of {', '.join(BACKENDS)}")
    return importlib.import_module(f"pipeline.backends.{name}")


def require(name: str) -> ModuleType:
    """The backend module, after checking its engine can be imported here."""
    mod = get(name)
    ok, reason = mod.available()
    if not ok:
        raise UserError(f"the {name} engine is not available here: {reason}", INSTALL_HINT[name])
    return mod
