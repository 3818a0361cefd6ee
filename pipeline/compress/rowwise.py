"""Row-wise symmetric INT8 of a lookup table (token embeddings): one scale per row, so a rare token's
small row keeps its precision instead of sharing the largest row's scale. Used by the engines that store
embedding tables int8 (pipeline/backends/tflite/embedding.py, pipeline/backends/onnxruntime/embedding.py)."""
from __future__ import annotations

import numpy as np


def quantize_rows(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 table, float32 scale per row) of a 2-D float table: symmetric, scale = max|row| / 127
    (1.0 for an all-zero row), values rounded to nearest and kept in -127..127."""
    amax = np.abs(table).max(axis=1)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    return np.clip(np.rint(table / scale[:, None]), -127, 127).astype(np.int8), scale


def error_steps(table: np.ndarray, q: np.ndarray, scale: np.ndarray) -> float:
    """The largest rounding error of `q` vs `table`, in steps of its own row's scale (<= 0.5 when right)."""
    return round(float((np.abs(q.astype(np.float32) * scale[:, None] - table).max(axis=1) / scale).max()), 3)
