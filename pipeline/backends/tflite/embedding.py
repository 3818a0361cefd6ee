"""INT8 embedding tables in a converted .tflite: the one big weight litert-torch's PT2E flow leaves float.

The PT2E quantizer annotates linears, convs, matmuls and elementwise ops, not `aten.embedding`, so the
token table of a text model (8000 x 256 floats in the bundled encoder: 39% of its parameters) stays
float32 in an otherwise INT8 file, and the "INT8" model is only ~1.5x smaller than FP32.

TFLite's EMBEDDING_LOOKUP has a hybrid kernel for exactly this: an int8 table with one scale per row
(per-channel quantization on axis 0, op version 4), dequantized as the rows are looked up, with a
float32 output. So after conversion each EMBEDDING_LOOKUP whose table is a float32 constant and whose
output is float32 gets its table rewritten to int8, symmetric per row (scale = max|row| / 127). The
lookup's output feeds the float LayerNorm either way; nothing downstream changes. Per-row scales keep
the rounding error of each row within half a step of its own range (a rare token's small row is not
crushed by the largest row's scale).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.compress.rowwise import error_steps, quantize_rows

PER_ROW_VERSION = 4   # EMBEDDING_LOOKUP with a per-channel quantized table (TFLite op versioning)


def int8_embedding_tables(model: Any) -> list[dict]:
    """Rewrite, in the flatbuffer object `model` (flatbuffer_utils.read_model*), the float32 constant
    table of every EMBEDDING_LOOKUP with a float32 output to int8 per row. Returns one entry per table:
    shape, bytes before/after and the largest absolute rounding error relative to its row's range."""
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils

    done, seen = [], set()
    for graph in model.subgraphs:
        for op in graph.operators:
            if flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) != "EMBEDDING_LOOKUP":
                continue
            table = graph.tensors[op.inputs[1]]
            data = model.buffers[table.buffer].data
            if (table.type != fb.TensorType.FLOAT32 or data is None or len(table.shape) != 2
                    or graph.tensors[op.outputs[0]].type != fb.TensorType.FLOAT32 or id(table) in seen):
                continue
            seen.add(id(table))
            w = np.frombuffer(bytes(np.asarray(data, dtype=np.uint8)), dtype=np.float32).reshape(table.shape)
            q, scale = quantize_rows(w)
            model.buffers[table.buffer].data = np.frombuffer(q.tobytes(), dtype=np.uint8)
            table.type = fb.TensorType.INT8
            params = fb.QuantizationParametersT()
            params.scale, params.zeroPoint, params.quantizedDimension = scale.tolist(), [0] * len(scale), 0
            table.quantization = params
            model.operatorCodes[op.opcodeIndex].version = max(model.operatorCodes[op.opcodeIndex].version,
                                                               PER_ROW_VERSION)
            done.append({"shape": [int(d) for d in table.shape], "float_bytes": int(w.nbytes),
                         "int8_bytes": int(q.nbytes + 12 * len(scale)),   # + float32 scale, int64 zero point
                         "max_error_steps": error_steps(w, q, scale)})
    return done
