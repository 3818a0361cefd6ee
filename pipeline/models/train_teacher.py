"""Train a bundled model on Fashion-MNIST and write its checkpoint + record.

    python -m pipeline.models.train_teacher [--model resnet] [--epochs 15] [--out pipeline/models/default]
    python -m pipeline.models.train_teacher --model dw-separable --epochs 8 --no-augment --label-smoothing 0 \
        --out pipeline/models/dw-separable

Writes `teacher.pt` (a weights-only state_dict) and `teacher.json` (test accuracy, recipe, seed,
sha256 of the checkpoint). The pipeline never runs this: the default run loads the committed result.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.data import load_fashion_mnist
from pipeline.models.mobilenet import dw_separable
from pipeline.models.resnet import small_resnet

DEFAULT_OUT = Path(__file__).parent / "default"
MODELS = {"resnet": ("pipeline/models/resnet.py:small_resnet", small_resnet),
          "dw-separable": ("pipeline/models/mobilenet.py:dw_separable", dw_separable)}


def augment(x: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random crop (zero padding `pad`) and horizontal flip, per sample."""
    n, _, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad), value=float(x.min()))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    out = torch.stack([xp[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int = 1000) -> float:
    model.eval()
    correct = sum(int((model(x[i:i + bs]).argmax(1) == y[i:i + bs]).sum()) for i in range(0, len(x), bs))
    return correct / len(x)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="resnet")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-augment", action="store_true", help="no random crop / flip")
    ap.add_argument("--label-smoothing", type=float, default=0.05)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    ds = load_fashion_mnist()
    x_tr = torch.from_numpy(np.asarray(ds.normalize(ds.x_train)))
    y_tr = torch.from_numpy(ds.y_train)
    x_te = torch.from_numpy(np.asarray(ds.normalize(ds.x_test)))
    y_te = torch.from_numpy(ds.y_test)

    factory_spec, factory = MODELS[args.model]
    model = factory(num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    steps_per_epoch = math.ceil(len(x_tr) / args.batch_size)
    total = args.epochs * steps_per_epoch
    warmup = steps_per_epoch // 2
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup))))
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.time()
    history = []
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(x_tr), generator=gen)
        loss_sum = 0.0
        for i in range(steps_per_epoch):
            idx = perm[i * args.batch_size:(i + 1) * args.batch_size]
            xb = x_tr[idx] if args.no_augment else augment(x_tr[idx], gen)
            loss = F.cross_entropy(model(xb), y_tr[idx], label_smoothing=args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach())
        acc = accuracy(model, x_te, y_te)
        history.append({"epoch": epoch + 1, "loss": round(loss_sum / steps_per_epoch, 4), "test_accuracy": acc})
        print(f"epoch {epoch + 1}/{args.epochs} loss {loss_sum / steps_per_epoch:.4f} "
              f"test acc {acc:.4f} elapsed {time.time() - t0:.0f}s", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    ckpt = args.out / "teacher.pt"
    torch.save(model.state_dict(), ckpt)
    record = {
        "factory": factory_spec,
        "data": "fashion-mnist (Debian dataset-fashion-mnist), 60k train / 10k test",
        "test_accuracy": accuracy(model, x_te, y_te),
        "params": sum(p.numel() for p in model.parameters()),
        "recipe": {"epochs": args.epochs, "batch_size": args.batch_size, "optimizer": "SGD nesterov 0.9",
                   "lr": args.lr, "schedule": "warm-up 0.5 epoch + cosine", "weight_decay": 5e-4,
                   "label_smoothing": args.label_smoothing,
                   "augment": "none" if args.no_augment else "random crop pad 2 + horizontal flip", "seed": args.seed},
        "history": history,
        "train_seconds": round(time.time() - t0, 1),
        "torch": torch.__version__,
        "host": platform.processor() or platform.machine(),
        "sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest(),
    }
    (args.out / "teacher.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in ("test_accuracy", "params", "train_seconds")}))


if __name__ == "__main__":
    main()
