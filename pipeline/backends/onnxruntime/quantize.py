"""ONNX Runtime INT8: static post-training quantization to a QDQ ONNX for the CPU execution provider."""
from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx

from pipeline.backends.onnxruntime.common import (ACTIVATION_TYPE, ACTIVATION_TYPE_REASON, CALIBRATION_METHODS,
                                                  ENTROPY_NOTE, PERCENTILE, check_calibration, check_node_names,
                                                  cpu_session, input_dtypes, io_shapes, load_onnx, ort_module,
                                                  qdq_summary)
from pipeline.backends.onnxruntime.embedding import int8_gather_tables
from pipeline.errors import UserError
from pipeline.hashing import sha256_file


class _NoPreprocessHint(logging.Filter):
    """quantize_static logs "Please consider to run pre-processing" through the root logger on every
    call. The hint is about its shape inference on raw exports; export_onnx's graphs are already
    optimized, so the line is noise in every run log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-process" not in record.getMessage()


class _ArrayReader:
    """onnxruntime CalibrationDataReader over named arrays, in batches the model accepts."""

    def __init__(self, calib: dict[str, np.ndarray], batch: int | None):
        step = batch or 32
        n = len(next(iter(calib.values())))
        self._batches = iter([{k: v[i:i + step] for k, v in calib.items()} for i in range(0, n - (batch or 1) + 1, step)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


# Attention graphs (Softmax / LayerNormalization present): only the linears go to INT8 (MatMul, Gemm,
# Conv); Softmax, LayerNorm, GELU, the residual and mask Adds and the embedding gathers stay float.
# Quantizing every op lets the additive attention mask (-1e4 on padding) set an activation scale that
# crushes the attention scores: the token encoder of tests/e2e/any_models.py falls from 1.00 to 0.51
# top-1 with all ops, and keeps 1.00 with the linears only (ONNX Runtime 1.32, minmax; tests/backends).
ATTENTION_OPS = ("Softmax", "LayerNormalization")
LINEAR_OPS = ["MatMul", "Gemm", "Conv"]


def op_types_for(model) -> list[str] | None:
    """The op types to quantize: the linears for an attention graph, else None (every op ORT quantizes)."""
    return LINEAR_OPS if any(n.op_type in ATTENTION_OPS for n in model.graph.node) else None


def quantize_int8(onnx_in: Path, calib: np.ndarray, onnx_out: Path, method: str = "minmax",
                  per_channel: bool = True, exclude_nodes: Sequence[str] = (),
                  activation_symmetric: bool = False, reduce_range: bool = False,
                  op_types: str | list[str] = "auto", int8_embeddings: bool = True) -> dict:
    """Static INT8 post-training quantization to a QDQ ONNX model for ONNX Runtime CPU.

    `op_types`: "auto" (the linears only in an attention graph, see ATTENTION_OPS; every op otherwise),
    "all", or a list of ONNX op types.

    Weights: int8, symmetric, per output channel (when `per_channel`). Activations: see
    ACTIVATION_TYPE. `method` picks the calibration (minmax | percentile | entropy); `calib` is
    normalized inputs (Inputs, or one array for a single-input model); integer inputs (token ids, masks)
    are fed as they are and never quantized. Nodes named in `exclude_nodes` stay in float. `reduce_range`:
    7-bit weights, for x86 CPUs without VNNI (pipeline/isa.py). `int8_embeddings`: embedding tables (float
    initializers gathered by integer ids, which static QDQ leaves float) become int8 per row, dequantized
    after the lookup (embedding.py); a Gather named in `exclude_nodes` keeps its table float.
    """
    ort = ort_module()
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if method not in CALIBRATION_METHODS:
        raise UserError(f"unknown calibration method '{method}'", f"use one of {', '.join(CALIBRATION_METHODS)}")
    model = load_onnx(onnx_in)
    shapes = io_shapes(model)
    calib = check_calibration(calib, shapes["inputs"], input_dtypes(model))
    input_shape = next(iter(shapes["inputs"].values()))
    n_calib = len(next(iter(calib.values())))
    batch = input_shape[0] if isinstance(input_shape[0], int) else None
    if batch is not None and n_calib < batch:
        raise UserError(f"{n_calib} calibration samples for a model with a fixed batch of {batch}",
                        f"give at least {batch} calibration images")
    excluded = check_node_names(model, exclude_nodes)
    op_types = op_types_for(model) if op_types == "auto" else None if op_types == "all" else list(op_types)

    onnx_out = Path(onnx_out)
    onnx_out.parent.mkdir(parents=True, exist_ok=True)
    hint_filter = _NoPreprocessHint()
    logging.getLogger().addFilter(hint_filter)
    try:
        with contextlib.redirect_stdout(io.StringIO()):     # the histogram calibrators print progress lines
            quantize_static(
                str(onnx_in), str(onnx_out), _ArrayReader(calib, batch),
                quant_format=QuantFormat.QDQ, per_channel=per_channel, reduce_range=reduce_range,
                activation_type=getattr(QuantType, ACTIVATION_TYPE), weight_type=QuantType.QInt8,
                nodes_to_exclude=excluded, op_types_to_quantize=op_types,
                calibrate_method={"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                                  "entropy": CalibrationMethod.Entropy}[method],
                extra_options={"ActivationSymmetric": activation_symmetric, "WeightSymmetric": True,
                               "CalibPercentile": PERCENTILE},
            )
    finally:
        logging.getLogger().removeFilter(hint_filter)
    quantized = onnx.load(str(onnx_out))
    tables = int8_gather_tables(quantized, set(excluded)) if int8_embeddings else []
    if tables:
        onnx.save(quantized, str(onnx_out))
    cpu_session(str(onnx_out))  # it must load in ONNX Runtime CPU
    return {
        "method": method,
        **({"percentile": PERCENTILE} if method == "percentile" else {}),
        **({"note": ENTROPY_NOTE} if method == "entropy" else {}),
        "format": "QDQ",
        "activation_type": ACTIVATION_TYPE,
        "activation_type_reason": ACTIVATION_TYPE_REASON,
        "activation_symmetric": activation_symmetric,
        "weight_type": "QInt8",
        "per_channel": per_channel,
        "reduce_range": reduce_range,
        "n_calibration": n_calib,
        "excluded": excluded,
        "op_types_quantized": op_types or "all",
        **({"op_types_reason": "attention graph: linears in INT8; Softmax, LayerNorm, GELU, Adds and gathers float"}
           if op_types else {}),
        **({"embedding_tables": {"int8": tables, "note": "int8 per row, dequantized after the Gather (Cast, Mul)"}}
           if tables else {}),
        **qdq_summary(quantized),
        "onnxruntime": ort.__version__,
        "bytes": onnx_out.stat().st_size,
        "sha256": sha256_file(onnx_out),
    }
