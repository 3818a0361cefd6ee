"""`--model hf:DIR`: a Hugging Face sequence classifier saved with save_pretrained, loaded offline, its
`.logits` measured, pruned (heads, FFN and hidden widths), distilled, quantized and run in ONNX Runtime
and LiteRT. The models are made here from transformers configs (BERT with token types, DistilBERT
without) and trained briefly on the token data of tests/e2e/any_models.py."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
import any_models as am  # noqa: E402

from pipeline.errors import UserError  # noqa: E402
from pipeline.models import build, parse_spec  # noqa: E402
from pipeline.models.zoo import import_torchvision  # noqa: E402

FAST = ["--set", "distill.epochs=1", "--set", "evaluate.runs=20", "--set", "evaluate.warmup=5",
        "--set", "load.latency_runs=10", "--set", "quantize.heldout_samples=200", "--set", "quantize.fallback=false"]


def _save(kind: str, data: Path, out: Path) -> Path:
    import_torchvision()
    from transformers import (BertConfig, BertForSequenceClassification, DistilBertConfig,
                              DistilBertForSequenceClassification)
    torch.manual_seed(0)
    if kind == "bert":
        m = BertForSequenceClassification(BertConfig(vocab_size=64, hidden_size=64, num_hidden_layers=2,
                                                     num_attention_heads=4, intermediate_size=128,
                                                     max_position_embeddings=32, num_labels=2))
    else:
        m = DistilBertForSequenceClassification(DistilBertConfig(vocab_size=64, dim=64, n_layers=2, n_heads=4,
                                                                 hidden_dim=128, max_position_embeddings=32, num_labels=2))
    d = np.load(data)
    x, mask, y = (torch.from_numpy(d[k]) for k in ("input_ids_train", "attention_mask_train", "y_train"))
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    gen = torch.Generator().manual_seed(0)
    m.train()
    for _ in range(150):
        i = torch.randint(0, len(y), (64,), generator=gen)
        loss = torch.nn.functional.cross_entropy(m(input_ids=x[i], attention_mask=mask[i]).logits, y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval().save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf")
    am.make_tokens(d / "tokens.npz")
    return {"data": d / "tokens.npz", "bert": _save("bert", d / "tokens.npz", d / "bert"),
            "distil": _save("distil", d / "tokens.npz", d / "distil")}


def test_wrapper_names_the_inputs_each_architecture_takes(hf):
    import inspect
    bert, distil = (build(parse_spec(f"hf:{hf[k]}")) for k in ("bert", "distil"))
    assert list(inspect.signature(bert.forward).parameters) == ["input_ids", "attention_mask", "token_type_ids"]
    assert list(inspect.signature(distil.forward).parameters) == ["input_ids", "attention_mask"]
    ids = torch.ones(2, 16, dtype=torch.long)
    assert bert(ids, torch.ones_like(ids)).shape == (2, 2)


@pytest.mark.slow
def test_bert_from_save_pretrained_end_to_end(hf, tmp_path):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "pipeline", "run", "--model", f"hf:{hf['bert']}", "--data", str(hf["data"]),
                        "--target", "x86-cpu,android", "--out", str(out), *FAST], cwd=ROOT, capture_output=True, text=True,
                       timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    rows = {a["name"]: a for a in report["artifacts"]}
    assert rows["teacher"]["accuracy"] > 0.9 and report["model"].startswith("hf:")
    for name in ("distilled", "x86-cpu: INT8 ONNX", "android: INT8 TFLite"):
        assert rows[name]["accuracy"] >= rows["teacher"]["accuracy"] - 0.05, name
    ch = json.loads((out / "prune" / "stage.json").read_text())["metrics"]["channels"]
    q = ch["model.bert.encoder.layer.0.attention.self.query"]
    assert q[1] < q[0] and q[1] % 16 == 0          # whole heads removed (head size 16)
    assert report["pruning"]["macs_fraction"] < 0.6


@pytest.mark.parametrize("spec, words", [("hf:{d}/missing", "not found"), ("hf:{d}", "no config.json")])
def test_hf_refusals(tmp_path, spec, words):
    with pytest.raises(UserError, match=words):
        build(parse_spec(spec.format(d=tmp_path)))
