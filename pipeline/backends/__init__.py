"""Inference engines, one module (or folder) each, registered by name.

The stages see only the contract in `base.py`: `get(name)` returns the engine a target names, and
`require(name)` the same after checking its runtime imports here. Engines are imported lazily, so a
missing one is one clear message when it is needed, never an ImportError at start. Nothing outside
this folder compares an engine's name with a string: ask the engine instead.
"""
from __future__ import annotations

import importlib
from functools import lru_cache

from pipeline.errors import UserError

# name -> "module:class". Adding an engine is adding a module and a line here.
REGISTRY = {
    "onnxruntime": "pipeline.backends.onnxruntime:OnnxRuntime",
    "tflite": "pipeline.backends.tflite:LiteRT",
    "tensorrt": "pipeline.backends.tensorrt:TensorRT",
}
BACKENDS = tuple(REGISTRY)


@lru_cache(maxsize=None)
def get(name: str):
    """The engine registered as `name` (imports only our module; the runtime itself is imported on use)."""
    if name not in REGISTRY:
        raise UserError(f"unknown backend '{name}'", f"use one of {', '.join(BACKENDS)}")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)()


def require(name: str):
    """The engine, after checking its runtime can be used here."""
    engine = get(name)
    ok, reason = engine.available()
    if not ok:
        raise UserError(f"the {name} engine is not available here: {reason}", engine.install_hint)
    return engine
