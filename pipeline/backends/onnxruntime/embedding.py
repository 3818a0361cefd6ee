"""INT8 embedding tables in an ONNX Runtime INT8 model: the gathers static QDQ leaves float.

quantize_static's attention rule quantizes the linears only (quantize.py), so a text model's token table
(a float initializer read by a Gather with integer ids) stays float32 and dominates the file. Each such
table becomes int8, symmetric per row (scale = max|row| / 127, the same scheme as the LiteRT lookup,
pipeline/compress/rowwise.py), and its Gather is rewritten to

    Gather(table_int8, ids) -> Cast(float) -> Mul(Gather(scales[V, 1], ids))

plain ONNX ops every runtime has: the rows are dequantized after the lookup, the output stays float32,
and nothing downstream changes. Only tables gathered along axis 0 are rewritten (an embedding lookup).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from pipeline.compress.rowwise import error_steps, quantize_rows

MIN_ROWS = 16   # smaller gathered constants (shape tables, tiny lookups) are left alone


def int8_gather_tables(model: onnx.ModelProto, skip_nodes: set[str] = frozenset()) -> list[dict]:
    """Rewrite, in place, every Gather (axis 0, not in `skip_nodes`) of a float32 2-D initializer with at
    least MIN_ROWS rows to the int8 per-row form above. Returns one entry per table rewritten."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    readers: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    done, nodes = [], []
    for node in graph.node:
        table = inits.get(node.input[0]) if node.op_type == "Gather" else None
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if (table is None or node.name in skip_nodes or axis != 0 or len(table.dims) != 2
                or table.data_type != onnx.TensorProto.FLOAT or table.dims[0] < MIN_ROWS):
            nodes.append(node)
            continue
        w = numpy_helper.to_array(table)
        q, scale = quantize_rows(w)
        base = f"{table.name}_int8row"
        if base not in inits:
            graph.initializer.extend([numpy_helper.from_array(q, base),
                                      numpy_helper.from_array(scale[:, None], f"{base}_scale")])
            inits[base] = graph.initializer[-2]
        out, ids, tag = node.output[0], node.input[1], node.name or out
        nodes += [helper.make_node("Gather", [base, ids], [f"{out}_q"], name=f"{tag}_int8", axis=0),
                  helper.make_node("Cast", [f"{out}_q"], [f"{out}_f"], name=f"{tag}_cast", to=onnx.TensorProto.FLOAT),
                  helper.make_node("Gather", [f"{base}_scale", ids], [f"{out}_s"], name=f"{tag}_scale", axis=0),
                  helper.make_node("Mul", [f"{out}_f", f"{out}_s"], [out], name=f"{tag}_dequant")]
        readers[table.name] -= 1
        done.append({"node": node.name, "table": table.name, "shape": [int(d) for d in table.dims],
                     "float_bytes": int(w.nbytes), "int8_bytes": int(q.nbytes + scale.nbytes),
                     "max_error_steps": error_steps(w, q, scale)})
    if done:
        del graph.node[:]
        graph.node.extend(nodes)
        unused = {t for t, n in readers.items() if n == 0 and t in inits}
        kept = [t for t in graph.initializer if t.name not in unused]
        del graph.initializer[:]
        graph.initializer.extend(kept)
    return done
