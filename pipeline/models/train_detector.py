"""Train the bundled default detector on `fashion-detect` and write its checkpoint + record.

    python -m pipeline.models.train_detector [--epochs 40] [--out pipeline/models/detect-default]

Writes `teacher.pt` (weights-only state_dict) and `teacher.json` (test mAP@0.5:0.95 and mAP@0.5 by
pycocotools after the shipped decode + NMS, recipe, seed, sha256). The pipeline never runs this: the
default detection run loads the committed result.
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

from pipeline.bundle.postprocess import detect
from pipeline.data.fashion_detect import dataset
from pipeline.models.detector import STRIDES, tiny_yolo
from pipeline.tasks import coco
from pipeline.tasks.detection_loss import anchor_points, gt_loss

DEFAULT_OUT = Path(__file__).parent / "detect-default"


def flip(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Horizontal flip of half the batch, boxes mirrored with it."""
    w = x.shape[-1]
    m = torch.rand(len(x), generator=gen) < 0.5
    x, y = x.clone(), y.clone()
    x[m] = x[m].flip(-1)
    yb = y[m]
    valid = yb[..., 0] >= 0
    x1, x2 = w - yb[..., 3], w - yb[..., 1]
    yb[..., 1] = torch.where(valid, x1, yb[..., 1])
    yb[..., 3] = torch.where(valid, x2, yb[..., 3])
    y[m] = yb
    return x, y


@torch.no_grad()
def test_map(model, x: torch.Tensor, y: np.ndarray, classes: int, bs: int = 250) -> dict:
    model.eval()
    out = np.concatenate([model(x[i:i + bs]).numpy() for i in range(0, len(x), bs)])
    return coco.evaluate(detect(out), y, classes)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.002)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--init", type=Path, help="continue from this state_dict (a cut-short earlier run), no warm-up")
    ap.add_argument("--init-note", default="", help="what --init is, for the record")
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    ds = dataset()
    x_tr, y_tr = torch.from_numpy(ds.normalize(ds.x_train.single)), torch.from_numpy(ds.y_train)
    x_te = torch.from_numpy(ds.normalize(ds.x_test.single))
    points, _ = anchor_points(x_tr.shape[2], x_tr.shape[3], STRIDES)
    model = tiny_yolo(num_classes=ds.num_classes)
    if args.init:
        model.load_state_dict(torch.load(args.init, map_location="cpu", weights_only=True))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=5e-4)
    steps_per_epoch = math.ceil(len(x_tr) / args.batch_size)
    total, warmup = args.epochs * steps_per_epoch, 0 if args.init else steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup))))
    gen = torch.Generator().manual_seed(args.seed)
    t0, history = time.time(), []
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(x_tr), generator=gen)
        loss_sum = 0.0
        for i in range(steps_per_epoch):
            idx = perm[i * args.batch_size:(i + 1) * args.batch_size]
            xb, yb = flip(x_tr[idx], y_tr[idx], gen)
            loss = gt_loss(model(xb), yb, points)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            sched.step()
            loss_sum += float(loss.detach())
        row = {"epoch": epoch + 1, "loss": round(loss_sum / steps_per_epoch, 4)}
        if (epoch + 1) % 5 == 0 or epoch + 1 == args.epochs:
            m = test_map(model, x_te, ds.y_test, ds.num_classes)
            row |= {"test_map": round(m["map"], 4), "test_map50": round(m["map50"], 4)}
        history.append(row)
        print(f"epoch {epoch + 1}/{args.epochs} {row} elapsed {time.time() - t0:.0f}s", flush=True)
        args.out.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), args.out / "teacher.pt")   # latest, so a cut-short run leaves a checkpoint

    ckpt = args.out / "teacher.pt"
    m = test_map(model, x_te, ds.y_test, ds.num_classes)
    record = {
        "factory": "pipeline/models/detector.py:tiny_yolo",
        "data": f"fashion-detect (pipeline/data/fashion_detect.py from Debian dataset-fashion-mnist), "
                f"{len(x_tr)} train / {len(x_te)} test images",
        "test_map": round(m["map"], 4), "test_map50": round(m["map50"], 4),
        "per_class_ap": [round(v, 4) for v in m["per_class_ap"]],
        "metric": "COCO mAP@0.5:0.95 / mAP@0.5 (pycocotools) after pipeline/bundle/postprocess.py detect() "
                  "(score > 0.001, per-class NMS IoU 0.6, 100 detections)",
        "params": sum(p.numel() for p in model.parameters()),
        "recipe": {"epochs": args.epochs, "batch_size": args.batch_size, "optimizer": "AdamW wd 5e-4",
                   "lr": args.lr, "schedule": "1-epoch warm-up + cosine to 2%", "augment": "horizontal flip",
                   "loss": "task-aligned assigner, BCE (IoU-aware targets) + 7.5 GIoU", "seed": args.seed},
        "init": (f"continued from {args.init.name} ({args.init_note})" if args.init else None),
        "history": history,
        "train_seconds": round(time.time() - t0, 1),
        "torch": torch.__version__,
        "host": platform.processor() or platform.machine(),
        "sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest(),
    }
    (args.out / "teacher.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in ("test_map", "test_map50", "params", "train_seconds")}))


if __name__ == "__main__":
    main()
