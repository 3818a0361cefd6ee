"""The output tail of a graph: the ops between the last weighted layers and the model's outputs.

In a detector that is the decode (DFL softmax and expectation, anchor offsets, stride scaling, sigmoid,
the concat of pixel boxes with 0..1 scores); in a classifier, nothing. Quantizing it is the best-known
way to break an INT8 detector: one activation scale for a tensor holding boxes in pixels and scores in
0..1 rounds every score to a few levels. `OUTPUT_TAIL` is the pseudo layer name every engine here
understands in its float-layer list: "keep the output tail in float".

- `onnx_tail(model)`: (tail node names, output layer node names) of an ONNX graph;
- `fx_tail(graph)`: (tail nodes, output layer nodes) of a torch.export / PT2E FX graph;
- `torch_output_layers(model, example)`: module names of the layers that feed the outputs directly
  (pruning keeps their output channels: the head's class and box rows).
"""
from __future__ import annotations

from typing import Sequence

OUTPUT_TAIL = "<output tail>"
ONNX_WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
FX_WEIGHTED = ("conv1d", "conv2d", "conv_transpose2d", "linear", "matmul", "addmm", "mm", "bmm")


def onnx_tail(model) -> tuple[list[str], list[str]]:
    producer = {o: n for n in model.graph.node for o in n.output}
    tail, heads, seen = [], [], set()
    stack = [o.name for o in model.graph.output]
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type in ONNX_WEIGHTED:
            heads.append(node.name)
            continue
        tail.append(node.name)
        stack.extend(node.input)
    order = {n.name: i for i, n in enumerate(model.graph.node)}
    return sorted(tail, key=order.get), sorted(heads, key=order.get)


def _weighted(node) -> bool:
    target = getattr(node.target, "__name__", str(node.target))
    return node.op == "call_function" and target.split(".")[0] in FX_WEIGHTED


def fx_tail(graph) -> tuple[set, list]:
    out = next(n for n in graph.nodes if n.op == "output")
    tail, heads, stack = set(), [], list(out.all_input_nodes)
    while stack:
        node = stack.pop()
        if node in tail or node in heads or node.op in ("placeholder", "get_attr"):
            continue
        if _weighted(node):
            heads.append(node)
            continue
        tail.add(node)
        stack.extend(node.all_input_nodes)
    return tail, heads


def module_of(node, prefix: str = "") -> str | None:
    """The innermost module path of an FX node (nn_module_stack), without `prefix`."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    path = list(stack.values())[-1][0]
    return path[len(prefix):] if prefix and path.startswith(prefix) else path


def torch_output_layers(model, example: Sequence) -> list[str]:
    """Module names of the weighted layers that feed the model's outputs with no other weighted layer
    between (found on a torch.export graph); [] if the model does not export."""
    import torch
    try:
        program = torch.export.export(model.eval(), tuple(example), strict=False)
    except Exception:  # noqa: BLE001 -- any model torch.export cannot take: the caller falls back
        return []
    _, heads = fx_tail(program.graph)
    names = [module_of(n) for n in heads]
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return sorted({n for n in names if n}, key=lambda n: order.get(n, 1 << 30))
