"""Train the bundled text model (BERT-style encoder) on small_fine_foods and write its checkpoint + record.

    python -m pipeline.models.train_text_teacher [--epochs 8] [--mlm-epochs 0] [--out pipeline/models/text-default]
    python -m pipeline.models.train_text_teacher --tokenizer pipeline/models/text-default/tokenizer.json --out /tmp/t

From scratch, on the 4,000 train reviews only (Debian r-cran-modeldata): a 10% stratified hold-out of
them is the validation set (best checkpoint, early stopping), the remaining 3,600 train a lowercase
WordPiece tokenizer (vocab 8,000; [PAD]=0, [UNK], [CLS], [SEP], [MASK]) and the model: optional
masked-LM pretraining on their text, then classification fine-tuning (AdamW, linear warm-up + decay).
The 1,000 test reviews are used once, for the test accuracy of the best checkpoint.

Reproducibility: the model's training is deterministic (fixed seeds, one thread), but the WordPiece trainer
of `tokenizers` 0.23 is not: ties between equally frequent merges are broken in hash-map order, which
changes from process to process (huggingface/tokenizers#1794), so two runs differ in a few vocabulary
entries and then in the weights. `--tokenizer FILE` reuses a saved tokenizer.json (e.g. the committed
one) instead of training one, which makes the whole run repeatable.

Writes `teacher.pt` (weights-only state_dict of `pipeline/models/text_encoder.py:text_encoder`),
`tokenizer.json`, `teacher.json` (architecture, test accuracy, recipe, seed, sizes, sha256 of the data,
tokenizer and checkpoint) and `train_log.txt`. The pipeline never runs this.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from pipeline.data.fine_foods import SOURCE, encode, load_fine_foods, load_tokenizer  # noqa: E402
from pipeline.models.text_encoder import TextEncoder, macs, text_encoder  # noqa: E402

DEFAULT_OUT = Path(__file__).parent / "text-default"
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4


def train_tokenizer(texts: list[str], vocab_size: int):
    """Lowercase BERT-style WordPiece: [CLS] text [SEP], [PAD] = 0."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True, clean_text=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, min_frequency=2,
                                        show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    assert [tok.token_to_id(s) for s in SPECIALS] == list(range(len(SPECIALS)))
    return tok


class MLMHead(nn.Module):
    """BERT's masked-LM head (transform + LayerNorm + decoder tied to the token embedding); dropped after."""

    def __init__(self, model: TextEncoder):
        super().__init__()
        hidden = model.tok_emb.embedding_dim
        self.dense = nn.Linear(hidden, hidden)
        self.ln = nn.LayerNorm(hidden, eps=1e-12)
        self.emb = model.tok_emb
        self.bias = nn.Parameter(torch.zeros(model.tok_emb.num_embeddings))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(self.ln(F.gelu(self.dense(h))), self.emb.weight, self.bias)


def mask_tokens(ids: torch.Tensor, mask: torch.Tensor, vocab: int, gen: torch.Generator, p: float = 0.15):
    """BERT masking: p of the real (non-special) tokens are targets; 80% -> [MASK], 10% random, 10% kept."""
    ids = ids.clone()
    candidates = (mask == 1) & (ids >= len(SPECIALS))
    target = candidates & (torch.rand(ids.shape, generator=gen) < p)
    r = torch.rand(ids.shape, generator=gen)
    ids[target & (r < 0.8)] = SPECIALS.index("[MASK]")
    rand_pos = target & (r >= 0.8) & (r < 0.9)
    ids[rand_pos] = torch.randint(len(SPECIALS), vocab, (int(rand_pos.sum()),), generator=gen)
    return ids, target


def batches(lengths: np.ndarray, batch_size: int, gen: torch.Generator) -> list[np.ndarray]:
    """Random batches of similar length (shuffle, sort within chunks of 50 batches, shuffle the batches):
    each batch is then cut to its longest sequence, which is exact (padding is masked) and ~2x faster."""
    perm = torch.randperm(len(lengths), generator=gen).numpy()
    chunk = batch_size * 50
    out = []
    for s in range(0, len(perm), chunk):
        part = perm[s:s + chunk]
        part = part[np.argsort(-lengths[part], kind="stable")]
        out += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    order = torch.randperm(len(out), generator=gen).numpy()
    return [out[i] for i in order]


def cut(ids: np.ndarray, mask: np.ndarray, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    length = int(mask[idx].sum(1).max())
    return torch.from_numpy(ids[idx, :length]), torch.from_numpy(mask[idx, :length])


@torch.no_grad()
def accuracy(model: nn.Module, ids: np.ndarray, mask: np.ndarray, y: np.ndarray, bs: int = 100,
             full_length: bool = False) -> float:
    """Top-1 accuracy; `full_length` feeds the stored (max_len, right-padded) arrays as they are."""
    model.eval()
    correct = 0
    for i in range(0, len(ids), bs):
        idx = np.arange(i, min(i + bs, len(ids)))
        x, m = (torch.from_numpy(ids[idx]), torch.from_numpy(mask[idx])) if full_length else cut(ids, mask, idx)
        correct += int((model(x, m).argmax(1).numpy() == y[idx]).sum())
    return correct / len(ids)


def linear_schedule(opt: torch.optim.Optimizer, total: int, warmup: int):
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (total - s) / max(1, total - warmup)))


def train_step(loss, model, opt, sched) -> float:
    """One optimizer step on `loss` (grad-norm clipped at 1.0, scheduler stepped); returns the loss value."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    return float(loss.detach())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=8, help="classification fine-tuning epochs (at most)")
    ap.add_argument("--mlm-epochs", type=int, default=0,
                    help="masked-LM pretraining epochs first (0: none; 4 were tried and lost 1.5 pt of val acc)")
    ap.add_argument("--patience", type=int, default=3, help="stop after this many epochs without a better val acc")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--mlm-lr", type=float, default=5e-4)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--warmup", type=float, default=0.1, help="fraction of the steps of each phase")
    ap.add_argument("--vocab-size", type=int, default=8000)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--ffn", type=int, default=1024)
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--limit-steps", type=int, default=0, help="stop each epoch after this many steps (timing)")
    ap.add_argument("--tokenizer", type=Path, default=None,
                    help="reuse this tokenizer.json instead of training one (makes a rerun repeatable)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    log_file = open(args.out / "train_log.txt", "w")
    t0 = time.time()

    def log(msg: str) -> None:
        line = f"[{time.time() - t0:7.1f}s] {msg}"
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    ds = load_fine_foods()
    # stratified hold-out of the train split
    rng = np.random.default_rng(args.seed)
    val_idx = np.sort(np.concatenate([rng.permutation(np.flatnonzero(ds.y_train == c))[
        :round(args.val_fraction * int((ds.y_train == c).sum()))] for c in range(len(ds.classes))]))
    fit_idx = np.setdiff1d(np.arange(len(ds.y_train)), val_idx)
    fit_texts = [ds.train_texts[i] for i in fit_idx]
    val_texts = [ds.train_texts[i] for i in val_idx]
    y_fit, y_val, y_te = ds.y_train[fit_idx], ds.y_train[val_idx], ds.y_test
    majority = int(np.bincount(y_fit).argmax())
    majority_acc = float((y_te == majority).mean())
    log(f"data: {len(fit_texts)} fit / {len(val_texts)} val (of {len(ds.y_train)} train) / {len(y_te)} test; "
        f"majority class '{ds.classes[majority]}' gets {majority_acc:.4f} on test")

    tok_path = args.out / "tokenizer.json"
    if args.tokenizer:
        tok = load_tokenizer(args.tokenizer)
        if args.tokenizer.resolve() != tok_path.resolve():
            tok_path.write_bytes(args.tokenizer.read_bytes())
    else:
        tok = train_tokenizer(fit_texts, args.vocab_size)
        tok.save(str(tok_path))
    vocab = tok.get_vocab_size()
    ids_fit, m_fit = encode(tok, fit_texts, args.max_len)
    ids_val, m_val = encode(tok, val_texts, args.max_len)
    ids_te, m_te = encode(tok, ds.test_texts, args.max_len)
    len_fit = m_fit.sum(1)
    log(f"tokenizer: vocab {vocab}, fit lengths median {int(np.median(len_fit))} tokens, "
        f"{(len_fit == args.max_len).mean():.1%} truncated at {args.max_len}")

    arch = {"vocab_size": vocab, "hidden": args.hidden, "layers": args.layers, "heads": args.heads,
            "ffn": args.ffn, "max_len": args.max_len, "num_classes": len(ds.classes)}
    model = text_encoder(**arch)
    params = sum(p.numel() for p in model.parameters())
    log(f"model: {arch}, {params} params, {macs(model, args.max_len) / 1e6:.1f}M MACs at L={args.max_len}")
    gen = torch.Generator().manual_seed(args.seed)

    def decay_groups(mods: list[nn.Module]):
        named = [p for m in mods for p in m.parameters()]
        seen, decay, no_decay = set(), [], []
        for p in named:
            if id(p) in seen:
                continue
            seen.add(id(p))
            (no_decay if p.ndim < 2 else decay).append(p)  # biases and LayerNorm: no weight decay
        return [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    history = []
    # phase 1: masked-LM pretraining on the fit texts
    if args.mlm_epochs > 0:
        head = MLMHead(model)
        opt = torch.optim.AdamW(decay_groups([model, head]), lr=args.mlm_lr, betas=(0.9, 0.98), eps=1e-6)
        steps = math.ceil(len(ids_fit) / args.batch_size)
        if args.limit_steps:
            steps = min(steps, args.limit_steps)
        total = args.mlm_epochs * steps
        sched = linear_schedule(opt, total, max(1, int(args.warmup * total)))
        for epoch in range(args.mlm_epochs):
            model.train()
            head.train()
            loss_sum, te = 0.0, time.time()
            for i, idx in enumerate(batches(len_fit, args.batch_size, gen)[:steps]):
                x, m = cut(ids_fit, m_fit, idx)
                xm, target = mask_tokens(x, m, vocab, gen)
                h = model.encode(xm, m)
                loss_sum += train_step(F.cross_entropy(head(h[target]), x[target]), model, opt, sched)
            history.append({"phase": "mlm", "epoch": epoch + 1, "loss": round(loss_sum / steps, 4),
                            "seconds": round(time.time() - te, 1)})
            log(f"mlm epoch {epoch + 1}/{args.mlm_epochs} loss {loss_sum / steps:.4f} "
                f"({time.time() - te:.0f}s)")
        del head, opt

    # phase 2: classification fine-tuning, best checkpoint by val accuracy
    opt = torch.optim.AdamW(decay_groups([model]), lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    steps = math.ceil(len(ids_fit) / args.batch_size)
    if args.limit_steps:
        steps = min(steps, args.limit_steps)
    total = args.epochs * steps
    sched = linear_schedule(opt, total, max(1, int(args.warmup * total)))
    best_val, best_epoch, best_state, since_best = -1.0, 0, None, 0
    for epoch in range(args.epochs):
        model.train()
        loss_sum, te = 0.0, time.time()
        for idx in batches(len_fit, args.batch_size, gen)[:steps]:
            x, m = cut(ids_fit, m_fit, idx)
            loss_sum += train_step(F.cross_entropy(model(x, m), torch.from_numpy(y_fit[idx])), model, opt, sched)
        val_acc = accuracy(model, ids_val, m_val, y_val)
        history.append({"phase": "classify", "epoch": epoch + 1, "loss": round(loss_sum / steps, 4),
                        "val_accuracy": round(val_acc, 4), "seconds": round(time.time() - te, 1)})
        log(f"epoch {epoch + 1}/{args.epochs} loss {loss_sum / steps:.4f} val acc {val_acc:.4f} "
            f"({time.time() - te:.0f}s)")
        if val_acc > best_val:
            best_val, best_epoch, since_best = val_acc, epoch + 1, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            since_best += 1
            if since_best >= args.patience:
                log(f"early stop: no better val acc for {args.patience} epochs")
                break

    model.load_state_dict(best_state)
    model.eval()
    test_acc = accuracy(model, ids_te, m_te, y_te, full_length=True)
    log(f"best epoch {best_epoch} (val acc {best_val:.4f}): test acc {test_acc:.4f} at max_len {args.max_len} "
        f"(majority {majority_acc:.4f})")

    ckpt = args.out / "teacher.pt"
    torch.save(best_state, ckpt)
    sha = lambda p: hashlib.sha256(Path(p).read_bytes()).hexdigest()  # noqa: E731
    record = {
        "factory": "pipeline/models/text_encoder.py:text_encoder",
        "kwargs": arch,
        "inputs": {"input_ids": f"int64 (N, L), L <= {args.max_len}, [CLS] text [SEP], right-padded with [PAD]=0",
                   "attention_mask": "int64 (N, L), 1 token / 0 padding"},
        "classes": ds.classes,
        "data": SOURCE,
        "data_file": "modeldata/data/Rdata.rdb",
        "data_sha256": ds.sha256,
        "tokenizer": {"file": "tokenizer.json", "sha256": sha(tok_path), "vocab_size": vocab,
                      "type": "WordPiece, lowercase (BertNormalizer), BertPreTokenizer",
                      "trained_on": (f"reused {args.tokenizer.name}" if args.tokenizer else
                                     f"the {len(fit_texts)} fit reviews of the train split")},
        "test_accuracy": test_acc,
        "majority_baseline_test_accuracy": majority_acc,
        "val_accuracy": best_val,
        "best_epoch": best_epoch,
        "sizes": {"train": len(fit_texts), "val": len(val_texts), "test": len(y_te)},
        "params": params,
        "macs_at_max_len": macs(model, args.max_len),
        "recipe": {"mlm_epochs": args.mlm_epochs, "mlm_lr": args.mlm_lr, "epochs": args.epochs,
                   "epochs_run": sum(h["phase"] == "classify" for h in history), "patience": args.patience,
                   "batch_size": args.batch_size, "optimizer": "AdamW (0.9, 0.98)", "lr": args.lr,
                   "schedule": f"linear warm-up {args.warmup:.0%} + linear decay, per phase",
                   "weight_decay": args.weight_decay, "grad_clip": 1.0, "dropout": 0.1,
                   "batching": "length-grouped random batches cut to their longest sequence",
                   "val": f"{args.val_fraction:.0%} stratified hold-out of train, best checkpoint",
                   "seed": args.seed, "threads": args.threads},
        "history": history,
        "train_seconds": round(time.time() - t0, 1),
        "torch": torch.__version__,
        "host": platform.processor() or platform.machine(),
        "sha256": sha(ckpt),
    }
    (args.out / "teacher.json").write_text(json.dumps(record, indent=2) + "\n")
    log(json.dumps({k: record[k] for k in ("test_accuracy", "majority_baseline_test_accuracy", "params",
                                           "train_seconds")}))


if __name__ == "__main__":
    main()
