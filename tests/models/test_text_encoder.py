"""The bundled text model (pipeline/models/text_encoder.py) and its data (pipeline/data/fine_foods.py).

Tiny configs keep it fast; the ONNX check runs the real exporter (dynamo) and ONNX Runtime. The data
tests read the real small_fine_foods reviews and are skipped only where Debian's r-cran-modeldata is
not installed (setup.sh installs it).
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.data import fine_foods
from pipeline.errors import UserError
from pipeline.models.text_encoder import SelfAttention, macs, text_encoder

ROOT = Path(__file__).resolve().parents[2]
TEXT_DEFAULT = ROOT / "pipeline" / "models" / "text-default"
TINY = dict(vocab_size=120, hidden=32, layers=1, heads=4, ffn=64, max_len=16, num_classes=2)

try:
    fine_foods.find_modeldata()
    HAVE_MODELDATA, WHY = True, ""
except UserError as e:
    HAVE_MODELDATA, WHY = False, f"r-cran-modeldata is not installed ({e.problem}); run apt-get install r-cran-modeldata"
needs_modeldata = pytest.mark.skipif(not HAVE_MODELDATA, reason=WHY)


def tiny_model(seed: int = 0) -> torch.nn.Module:
    """TINY with weights at std 0.3 rather than BERT's 0.02, so that the logits depend visibly on the input."""
    torch.manual_seed(seed)
    model = text_encoder(**TINY).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(std=0.3)
    return model


def batch(n: int, length: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """[CLS]-led int64 ids with right padding of random lengths (the first row is full)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, TINY["vocab_size"], (n, length), generator=g)
    ids[:, 0] = 2
    lengths = torch.randint(2, length + 1, (n,), generator=g)
    lengths[0] = length
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    return ids * mask, mask


def test_forward_takes_int64_ids_and_mask_and_returns_logits():
    model = tiny_model()
    ids, mask = batch(3, 11)
    assert ids.dtype == mask.dtype == torch.int64
    with torch.no_grad():
        out = model(ids, mask)
    assert out.shape == (3, 2) and out.dtype == torch.float32 and torch.isfinite(out).all()
    attn = [m for m in model.modules() if isinstance(m, SelfAttention)]
    assert len(attn) == TINY["layers"]
    assert all(isinstance(a.num_heads, int) and a.num_heads == TINY["heads"] for a in attn)
    assert all(isinstance(getattr(a, n), torch.nn.Linear) for a in attn for n in ("q", "k", "v", "out"))


def test_padding_does_not_change_the_logits_of_the_unpadded_part():
    model = tiny_model()
    ids, mask = batch(4, 9, seed=1)
    with torch.no_grad():
        ref = model(ids, mask)
        # 7 more padding positions, holding arbitrary ids: masked out, so nothing changes
        junk = torch.randint(5, TINY["vocab_size"], (4, 7), generator=torch.Generator().manual_seed(2))
        longer = model(torch.cat([ids, junk], 1), torch.cat([mask, torch.zeros(4, 7, dtype=torch.int64)], 1))
        # and each row alone, cut to its own length
        alone = torch.cat([model(ids[i:i + 1, :int(mask[i].sum())], mask[i:i + 1, :int(mask[i].sum())])
                           for i in range(4)])
        changed = ids.clone()
        changed[:, 1] = 3  # a real token changes: the logits must move (the mask is not hiding everything)
        moved = model(changed, mask)
    torch.testing.assert_close(longer, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone, ref, atol=1e-5, rtol=1e-5)
    assert (moved - ref).abs().max() > 1e-2


def test_macs_count_at_max_len():
    model = tiny_model()
    h, f, length = TINY["hidden"], TINY["ffn"], TINY["max_len"]
    per_layer = length * (4 * h * h + 2 * h * f) + 2 * length * length * h
    assert macs(model, length) == TINY["layers"] * per_layer + h * h + h * TINY["num_classes"]


def test_onnx_export_dynamic_sequence_matches_torch_in_onnxruntime(tmp_path):
    import onnx
    import onnxruntime as ort
    model = tiny_model()
    ids, mask = batch(2, TINY["max_len"])
    seq = torch.export.Dim("seq", min=2, max=TINY["max_len"])
    n = torch.export.Dim("batch", min=1, max=64)
    program = torch.onnx.export(model, (ids, mask), dynamo=True, opset_version=18,
                                input_names=["input_ids", "attention_mask"], output_names=["logits"],
                                dynamic_shapes={"input_ids": {0: n, 1: seq}, "attention_mask": {0: n, 1: seq}})
    path = tmp_path / "text.onnx"
    program.save(str(path))
    graph = onnx.load(str(path)).graph
    assert [(i.name, i.type.tensor_type.elem_type) for i in graph.input] == [
        ("input_ids", onnx.TensorProto.INT64), ("attention_mask", onnx.TensorProto.INT64)]
    assert all(not i.type.tensor_type.shape.dim[1].HasField("dim_value") for i in graph.input)  # symbolic L
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for rows, length in ((2, TINY["max_len"]), (3, 5), (1, 9)):
        x, m = batch(rows, length, seed=length)
        with torch.no_grad():
            ref = model(x, m).numpy()
        out = sess.run(None, {"input_ids": x.numpy(), "attention_mask": m.numpy()})[0]
        np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)


def test_missing_modeldata_is_one_user_error_naming_the_package(tmp_path):
    with pytest.raises(UserError) as e:
        fine_foods.load_fine_foods(tmp_path)
    assert "apt-get install r-cran-modeldata" in e.value.line()


@needs_modeldata
def test_fine_foods_reads_the_real_reviews():
    ds = fine_foods.load_fine_foods()
    assert (len(ds.train_texts), len(ds.test_texts)) == (4000, 1000)
    assert ds.classes == ["other", "great"]
    assert ds.y_train.dtype == ds.y_test.dtype == np.int64
    assert (int(ds.y_train.sum()), int(ds.y_test.sum())) == (2600, 658)  # "great" = 1
    assert all(isinstance(t, str) and t.strip() for t in ds.train_texts + ds.test_texts)
    assert ds.train_texts[0].startswith("this stuff is  not stuffing") and ds.y_train[0] == 0
    assert len(ds.sha256) == 64


@needs_modeldata
@pytest.mark.skipif(not (TEXT_DEFAULT / "tokenizer.json").exists(), reason="no committed text tokenizer yet")
def test_export_npz_cli_writes_int64_ids_masks_and_labels(tmp_path, capsys):
    out = tmp_path / "ff.npz"
    r = subprocess.run([sys.executable, "-m", "pipeline.data.fine_foods", "--out", str(out), "--tokenizer",
                        str(TEXT_DEFAULT), "--max-len", "32"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    with np.load(out) as z:
        arrays = {k: z[k] for k in z.files}
    assert set(arrays) == {"input_ids_train", "attention_mask_train", "y_train", "input_ids_test",
                           "attention_mask_test", "y_test", "classes"}
    assert list(arrays["classes"]) == ["other", "great"]
    for split, n in (("train", 4000), ("test", 1000)):
        ids, mask, y = arrays[f"input_ids_{split}"], arrays[f"attention_mask_{split}"], arrays[f"y_{split}"]
        assert ids.dtype == mask.dtype == y.dtype == np.int64
        assert ids.shape == mask.shape == (n, 32) and y.shape == (n,)
        assert (ids[:, 0] == 2).all()                              # [CLS]
        assert (np.diff(mask, axis=1) <= 0).all()                  # right padding
        assert (ids[mask == 0] == 0).all()                         # [PAD] = 0
        assert (ids[np.arange(n), mask.sum(1) - 1] == 3).all()     # [SEP] ends every sequence
    # a missing tokenizer: one line and exit code 2 (the CLI's main, in-process)
    assert fine_foods.main(["--out", str(tmp_path / "x.npz"), "--tokenizer", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: tokenizer") and err.count("\n") == 1


@pytest.mark.skipif(not (TEXT_DEFAULT / "teacher.json").exists(), reason="no committed text teacher yet")
def test_committed_text_teacher_loads_and_matches_its_record():
    import hashlib
    record = json.loads((TEXT_DEFAULT / "teacher.json").read_text())
    state = torch.load(TEXT_DEFAULT / "teacher.pt", weights_only=True)
    model = text_encoder(**record["kwargs"])
    model.load_state_dict(state)
    assert sum(p.numel() for p in model.parameters()) == record["params"]
    assert hashlib.sha256((TEXT_DEFAULT / "teacher.pt").read_bytes()).hexdigest() == record["sha256"]
    assert hashlib.sha256((TEXT_DEFAULT / "tokenizer.json").read_bytes()).hexdigest() == record["tokenizer"]["sha256"]
    tok = fine_foods.load_tokenizer(TEXT_DEFAULT)
    assert tok.get_vocab_size() == record["kwargs"]["vocab_size"] and tok.token_to_id("[PAD]") == 0
    assert record["test_accuracy"] > record["majority_baseline_test_accuracy"] + 0.05


@pytest.mark.slow
def test_default_text_classification_run_end_to_end(tmp_path):
    """`run --task text-classification` with no --model/--data: the bundled encoder on the real reviews,
    through ONNX Runtime with a dynamic sequence axis; the bundle ships the tokenizer. (LiteRT on token
    models: tests/e2e/test_any_model.py; its transformer conversion takes minutes at this size.)"""
    out = tmp_path / "text"
    r = subprocess.run([sys.executable, "-m", "pipeline", "run", "--task", "text-classification", "--target",
                        "x86-cpu", "--out", str(out), "--dynamic", "seq=32..128",
                        "--set", "evaluate.test_limit=128", "--set", "distill.train_limit=256", "--set", "distill.epochs=0.5",
                        "--set", "evaluate.runs=10", "--set", "evaluate.warmup=2", "--set", "load.latency_runs=5",
                        "--set", "quantize.heldout_samples=128", "--set", "quantize.fallback=false"],
                       cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["task"]["name"] == "text-classification" and report["data"] == "fine-foods"
    assert [i["name"] for i in report["inputs"]] == ["input_ids", "attention_mask"]
    rows = {a["name"]: a for a in report["artifacts"]}
    assert rows["teacher"]["accuracy"] > 0.7          # the committed teacher on the first 128 test reviews
    assert [s["shape"] for s in rows["teacher"]["latency_by_shape"]] == ["seq=32", "seq=64", "seq=128"]
    man = json.loads((out / "handoff" / "x86-cpu" / "manifest.json").read_text())
    tok = man["tokenizer"]
    assert tok["file"] == "tokenizer.json" and tok["max_len"] == 128 and tok["padding"] == "right"
    assert tok["sha256"] == hashlib.sha256((out / "handoff" / "x86-cpu" / "tokenizer.json").read_bytes()).hexdigest()
    assert {i["runtime"]["dtype"] for i in man["inputs"]} == {"int64"}
    assert man["inputs"][0]["dynamic_axes"]["1"] == {"symbol": "seq", "min": 32, "max": 128}


def test_text_task_refuses_an_image_model(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pipeline", "run", "--task", "text-classification", "--model", "default",
                        "--data", "fashion-mnist", "--target", "android", "--out", str(tmp_path / "x"), "--until", "load"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "wants integer token ids" in r.stderr.strip().splitlines()[-1], r.stderr[-2000:]
