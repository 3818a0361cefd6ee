"""edge-compress: prune, distill, quantize and compile a PyTorch model for an edge device.

    from pipeline import compress
    result = compress(model, data, target="jetson")     # the Python face of `python -m pipeline run`
"""
__version__ = "0.1.0"


def compress(*args, **kwargs):
    """`pipeline.api.compress` (imported on first use, so `import pipeline` stays light)."""
    from pipeline.api import compress as _compress
    return _compress(*args, **kwargs)
