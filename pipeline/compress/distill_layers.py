"""Layer-wise distillation of encoder stacks (TinyBERT / DistilBERT style): which student block learns
from which teacher block.

`distill.feature_layers = ["blocks"]` matches the output hidden state of every block of the student's
encoder stack to a teacher block's. The stack is found, in either model, as the ModuleList / Sequential
with the most children that each hold an attention module (an integer `num_heads` or
`num_attention_heads`: the bundled text encoder's `layers`, a Hugging Face BERT's `encoder.layer`).
When the student has fewer blocks, `distill.layer_map = "uniform"` maps student block i (0-based, of
Ls) to teacher block round((i + 1) * Lt / Ls) - 1, so the last blocks meet and the rest spread evenly
(TinyBERT's uniform strategy); a list gives the teacher block of each student block. Where the hidden
widths differ, the distill loop's learned linear adapter projects the student's states to the
teacher's width (pipeline/compress/distill.py: make_adapter).
"""
from __future__ import annotations

import math

from torch import nn

from pipeline.compress.prune_layers import _heads
from pipeline.errors import UserError

BLOCKS = "blocks"


def encoder_blocks(model: nn.Module) -> list[str]:
    """Names of the blocks of `model`'s encoder stack (see the module docstring); [] when it has none."""
    best: list[str] = []
    for name, m in model.named_modules():
        if not isinstance(m, (nn.ModuleList, nn.Sequential)) or not len(m):
            continue
        kids = [f"{name}.{k}" if name else k for k, c in m.named_children() if any(_heads(x) for x in c.modules())]
        if len(kids) == len(m) and len(kids) > len(best):
            best = kids
    return best


def uniform_map(n_student: int, n_teacher: int) -> list[int]:
    """Teacher block of each student block: round((i + 1) * Lt / Ls) - 1, halves rounded up."""
    return [min(n_teacher, math.floor((i + 1) * n_teacher / n_student + 0.5)) - 1 for i in range(n_student)]


def block_pairs(layer_map, teacher: nn.Module, student: nn.Module) -> list[tuple[str, str]]:
    """(student block, teacher block) names for hidden-state matching under `layer_map` ("uniform" or a
    list with the teacher block index of every student block)."""
    t_blocks, s_blocks = encoder_blocks(teacher), encoder_blocks(student)
    if not t_blocks or not s_blocks:
        which = "teacher" if not t_blocks else "student"
        raise UserError(f'distill.feature_layers=["blocks"]: the {which} has no encoder stack (a ModuleList of '
                        f"blocks holding attention modules with an integer num_heads)",
                        'name the modules to match instead, e.g. --set \'distill.feature_layers=["layers.3"]\'')
    if layer_map == "uniform":
        mapping = uniform_map(len(s_blocks), len(t_blocks))
    else:
        mapping = list(layer_map)
        if len(mapping) != len(s_blocks) or any(not 0 <= j < len(t_blocks) for j in mapping):
            raise UserError(f"distill.layer_map {mapping} does not fit: the student has {len(s_blocks)} blocks and "
                            f"the teacher {len(t_blocks)}",
                            f"give {len(s_blocks)} teacher block indices in 0..{len(t_blocks) - 1}, or \"uniform\"")
    return [(s, t_blocks[j]) for s, j in zip(s_blocks, mapping)]
