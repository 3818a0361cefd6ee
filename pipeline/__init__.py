"""edge-compress: prune, distill, quantize and compile a PyTorch model for an edge device."""
__version__ = "0.1.0"
