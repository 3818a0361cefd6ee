"""A real-photo "agreement with the FP32 teacher" image folder for an ImageNet model, built offline.

Photos: Debian's `opencv-doc` sample images (`apt-get install opencv-doc`:
/usr/share/doc/opencv-doc/examples/data, 91 JPEG/PNG photos and pictures of many sizes). Each photo gives
`--views` views (the whole photo, its mirror image, and centred / corner crops of 70% of each side),
written as JPEG (quality 95) at their own size. The label of each view is the FP32 teacher's own top-1 on
it, preprocessed exactly as the pipeline will (pipeline/bundle/preprocess.py, `--preset`), so a run's
accuracy is agreement with the teacher. All views of one photo go to the same split (test: every
`--test-every`-th photo), so no test photo is seen in calibration or training.

Folders are named by ImageNet synset (n01440764, ...) and `classes.txt` (the 1000 synsets in the model's
output order, from timm's copy of the ImageNet synset list when it is installed, else `class<i>`) is
the run's class map:

    python benchmarks/real_photos.py --out /tmp/photos
    python -m pipeline run --model efficientnet-lite0 --data /tmp/photos \
        --set preprocess.preset=tf --set preprocess.class_map=/tmp/photos/classes.txt --target x86-cpu

Nothing is written into the repository; the folder is about 20 MB for 546 views.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.bundle import preprocess  # noqa: E402

PHOTO_DIR = Path("/usr/share/doc/opencv-doc/examples/data")
SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def synsets() -> list[str]:
    try:
        import importlib.util
        spec = importlib.util.find_spec("timm")
        f = Path(spec.origin).parent / "data" / "_info" / "imagenet_synsets.txt" if spec else None
        if f is not None and f.is_file():
            names = [ln.strip() for ln in f.read_text().splitlines() if ln.strip()]
            if len(names) == 1000:
                return names
    except (ImportError, ValueError):
        pass
    return [f"class{i}" for i in range(1000)]


def views(img, n: int):
    """`n` views of a PIL image: whole, mirrored, then 70% crops (centre, four corners), mirrored crops."""
    from PIL import ImageOps
    w, h = img.size
    cw, ch = int(w * 0.7), int(h * 0.7)
    boxes = [((w - cw) // 2, (h - ch) // 2), (0, 0), (w - cw, 0), (0, h - ch), (w - cw, h - ch)]
    out = [img, ImageOps.mirror(img)]
    out += [img.crop((x, y, x + cw, y + ch)) for x, y in boxes]
    out += [ImageOps.mirror(v) for v in out[2:]]
    return out[:n]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="folder to write (train/<synset>/*.jpg, test/..., classes.txt)")
    ap.add_argument("--model", default="efficientnet-lite0", help="the FP32 teacher (a --model spec)")
    ap.add_argument("--preset", default="tf", choices=sorted(preprocess.PRESETS))
    ap.add_argument("--views", type=int, default=6)
    ap.add_argument("--test-every", type=int, default=3, help="every k-th photo's views go to test")
    ap.add_argument("--photos", default=str(PHOTO_DIR))
    a = ap.parse_args(argv)
    import torch
    from PIL import Image

    from pipeline import models
    photos = sorted(p for p in Path(a.photos).iterdir() if p.suffix.lower() in SUFFIXES)
    if not photos:
        print(f"no photos in {a.photos}: apt-get install opencv-doc", file=sys.stderr)
        return 2
    torch.set_num_threads(2)
    model = models.build(models.parse_spec(a.model)).eval()
    pre = preprocess.PRESETS[a.preset]
    names = synsets()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "classes.txt").write_text("\n".join(names) + "\n")
    counts = collections.Counter()
    labels: dict[str, str] = {}
    for k, photo in enumerate(photos):
        split = "test" if k % a.test_every == a.test_every - 1 else "train"
        with Image.open(photo) as im:
            img = im.convert("RGB")
        for v, view in enumerate(views(img, a.views)):
            tmp = out / ".view.jpg"
            view.save(tmp, quality=95)
            # labelled on the JPEG as written (re-encoding can flip a close call), decoded as the pipeline will
            x = preprocess.normalize_image(preprocess.load_image(tmp, pre)[None], pre["mean"], pre["std"])
            with torch.no_grad():
                top1 = int(model(torch.from_numpy(x)).argmax(1))
            d = out / split / names[top1]
            d.mkdir(parents=True, exist_ok=True)
            tmp.rename(d / f"{photo.stem}-v{v}.jpg")
            counts[split] += 1
            labels[f"{split}/{photo.stem}-v{v}"] = names[top1]
    (out / "labels.json").write_text(json.dumps({"model": a.model, "preset": a.preset, "labels": labels}, indent=0))
    distinct = len({v for v in labels.values()})
    print(f"wrote {out}: {counts['train']} train and {counts['test']} test views of {len(photos)} photos, "
          f"{distinct} distinct teacher top-1 classes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
