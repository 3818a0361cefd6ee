"""Layer-wise distillation (pipeline/compress/distill_layers.py and the distill loop's block pairs):
finding encoder stacks, the uniform layer map, and hidden-state matching of a student with fewer and
narrower blocks than its teacher, trained for real on a small token task."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from pipeline.compress.distill import distill
from pipeline.compress.distill_layers import block_pairs, encoder_blocks, uniform_map
from pipeline.config import DistillConfig
from pipeline.data import load_npz
from pipeline.errors import UserError
from pipeline.models.resnet import small_resnet
from pipeline.models.text_encoder import text_encoder

sys.path.insert(0, str(Path(__file__).parents[1] / "e2e"))
import any_models as am  # noqa: E402

TINY = dict(vocab_size=64, hidden=32, heads=4, ffn=64, max_len=16, num_classes=2, dropout=0.0)


def test_uniform_map_ends_on_the_last_block_and_spreads_the_rest():
    assert uniform_map(4, 4) == [0, 1, 2, 3]
    assert uniform_map(6, 12) == [1, 3, 5, 7, 9, 11]           # DistilBERT / TinyBERT-6 on BERT-base
    assert uniform_map(4, 12) == [2, 5, 8, 11]                  # TinyBERT-4
    assert uniform_map(2, 5) == [2, 4]                          # 2.5 rounds up
    for ls, lt in ((1, 1), (3, 7), (5, 6)):
        m = uniform_map(ls, lt)
        assert m[-1] == lt - 1 and m == sorted(set(m)) and len(m) == ls


def test_encoder_blocks_and_pairs():
    teacher, student = text_encoder(layers=4, **TINY), text_encoder(layers=2, **TINY)
    assert encoder_blocks(teacher) == [f"layers.{i}" for i in range(4)]
    assert block_pairs("uniform", teacher, student) == [("layers.0", "layers.1"), ("layers.1", "layers.3")]
    assert block_pairs([0, 2], teacher, student) == [("layers.0", "layers.0"), ("layers.1", "layers.2")]
    with pytest.raises(UserError, match="layer_map"):
        block_pairs([0, 4], teacher, student)
    with pytest.raises(UserError, match="no encoder stack"):
        block_pairs("uniform", small_resnet(), small_resnet())


@pytest.fixture
def one_thread():
    """A tiny model: a second thread only waits on the first (and on a busy host, spins for seconds)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_hidden_states_of_a_shallower_narrower_student_learn_from_the_mapped_teacher_blocks(tmp_path, one_thread):
    am.make_tokens(tmp_path / "t.npz")
    ds = load_npz(tmp_path / "t.npz")
    torch.manual_seed(0)
    teacher = text_encoder(layers=2, **TINY).eval()     # untrained: its hidden states are targets all the same
    student = text_encoder(layers=1, **(TINY | {"hidden": 16, "ffn": 32}))
    example = ds.normalize(ds.x_train[:1])
    cfg = DistillConfig(epochs=2, batch_size=32, train_limit=256, lr=0.05, feature_layers=["blocks"], feature_weight=1.0,
                        val_fraction=0.1, patience=10)
    state, shapes = distill(teacher, student, example, ds, cfg, 0, torch.device("cpu"), tmp_path / "ckpt.pt")
    # student block 0 of 1 learns from teacher block 1 of 2, through a learned 16 -> 32 projection
    assert shapes == {"layers.0": {"student": [16, 16], "teacher": [16, 32], "adapter": "Linear",
                                   "adapter_params": 16 * 32, "teacher_module": "layers.1"}}
    f = state["feature_losses"]
    assert len(f) == state["step"] and sum(f[-3:]) < 0.7 * sum(f[:3]), f"hidden-state loss did not fall: {f[:3]} .. {f[-3:]}"
    assert not any(k.startswith("adapters") for k in student.state_dict())   # the projection is not shipped
