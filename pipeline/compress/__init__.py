"""The algorithms: pruning to a budget, the distillation loop, equalization and bias correction,
sensitivity and fallback, calibration sets, accuracy measurement. They take models and arrays, never a
run `Context`, so stages, tests and benchmarks call them directly."""
import sys
import types


class _Callable(types.ModuleType):
    """`from pipeline import compress; compress(model, data, target=...)`: importing any module of this
    package makes `pipeline.compress` this package, so the package itself is the API (pipeline/api.py)."""

    def __call__(self, *args, **kwargs):
        from pipeline.api import compress
        return compress(*args, **kwargs)


sys.modules[__name__].__class__ = _Callable
