"""Report parts of a detector: per-class AP, latency by pipeline step, and a picture of the same test images
with the teacher's boxes next to each target's deliverable's (drawn from the boxes evaluate recorded)."""
from __future__ import annotations

import base64
from pathlib import Path

import numpy as np

from pipeline.report.render import _f, host_proxy

PICTURE = "detections.png"
COLOURS = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]


def shown(report: dict) -> list[dict]:
    """The teacher and each target's deliverable, in report order (rows with recorded detections)."""
    keep = {t.get("deliverable") for t in report["targets"]} | {"teacher"}
    return [a for a in report["artifacts"] if a["name"] in keep and a.get("examples") is not None]


def markdown_lines(report: dict, classes: list[str]) -> list[str]:
    rows = [a for a in report["artifacts"] if a.get("per_class_ap")]
    if not rows:
        return []
    out = ["## Detection", "", "mAP@0.5:0.95 and mAP@0.5 by COCO evaluation (faster-coco-eval, cross-checked against "
           "pycocotools in the tests) after the shipped decode + NMS.", "",
           "| artifact | mAP@0.5:0.95 | mAP@0.5 | Δ mAP vs teacher |", "| --- | ---: | ---: | ---: |"]
    for a in rows:
        m = a.get("metrics") or {}
        d = a.get("accuracy_delta")
        out.append(f"| {a['name']} | {_f(m.get('map'), '.4f')} | {_f(m.get('map50'), '.4f')} | "
                   f"{'n/a' if d is None else format(d * 100, '+.2f') + ' pt'} |")
    per = shown(report) or rows[:1]
    out += ["", "Per-class AP@0.5:0.95:", "", "| class | " + " | ".join(a["name"] for a in per) + " |",
            "| --- |" + " ---: |" * len(per)]
    for i, c in enumerate(classes):
        out.append(f"| {c} | " + " | ".join(_f(a["per_class_ap"][i] if i < len(a["per_class_ap"]) else None, ".3f")
                                             for a in per) + " |")
    timed = [a for a in rows if a.get("pipeline_latency") and not host_proxy(report, a)]
    if timed:
        out += ["", "Latency by step (host p50 ms, batch 1; each step timed alone, end to end timed as one loop):", "",
                "| artifact | preprocess | inference | decode + NMS | end to end |", "| --- | ---: | ---: | ---: | ---: |"]
        for a in timed:
            p = a["pipeline_latency"]
            out.append(f"| {a['name']} | {_f(p['preprocess_p50_ms'], '.3f')} | {_f(p['inference_p50_ms'], '.3f')} | "
                       f"{_f(p['postprocess_p50_ms'], '.3f')} | {_f(p['end_to_end_p50_ms'], '.3f')} |")
        out += ["", f"Decode + NMS: {timed[0]['pipeline_latency']['postprocess']}."]
    if report.get("detection_picture"):
        out += ["", f"![teacher vs deliverables]({report['detection_picture']}) (columns: "
                + ", ".join(a["name"] for a in shown(report)) + ")"]
    return [*out, ""]


def draw(path: Path, images: np.ndarray, report: dict, classes: list[str], scale: int = 3) -> str | None:
    """A grid: one row per test image, one column per shown artifact, its recorded boxes drawn on the image.
    Returns the file name, or None when there is nothing to draw."""
    from PIL import Image, ImageDraw

    cols = shown(report)
    if not cols or images is None or not len(images):
        return None
    n = min(len(images), min(len(a["examples"]) for a in cols))
    h, w = images.shape[-2:]
    th, tw = h * scale, w * scale
    label_h = 14
    grid = Image.new("RGB", (tw * len(cols), label_h + th * n), (255, 255, 255))
    pen = ImageDraw.Draw(grid)
    for j, a in enumerate(cols):
        pen.text((j * tw + 3, 1), a["name"][:28], fill=(0, 0, 0))
        for i in range(n):
            img = images[i]
            img = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
            tile = Image.fromarray(np.ascontiguousarray(img)).convert("RGB").resize((tw, th), Image.NEAREST)
            d = ImageDraw.Draw(tile)
            for x1, y1, x2, y2, score, c in a["examples"][i]:
                colour = COLOURS[int(c) % len(COLOURS)]
                d.rectangle([x1 * scale, y1 * scale, x2 * scale, y2 * scale], outline=colour, width=2)
                name = classes[int(c)] if int(c) < len(classes) else str(int(c))
                d.text((x1 * scale + 2, max(0, y1 * scale - 11)), f"{name} {score:.2f}", fill=colour)
            grid.paste(tile, (j * tw, label_h + i * th))
    grid.save(path)
    return path.name


def html_section(report: dict, folder: Path, classes: list[str]) -> str:
    """The picture (inline) and the tables, as HTML, for report.html."""
    import html as h
    lines = markdown_lines(report, classes)
    if not lines:
        return ""
    body = []
    for ln in lines:
        if ln.startswith("| ---"):
            continue
        if ln.startswith("|"):
            cells = [c.strip() for c in ln.strip("|").split("|")]
            tag = "th" if not body or not body[-1].startswith("<tr") else "td"
            body.append("<tr>" + "".join(f"<{tag}>{h.escape(c)}</{tag}>" for c in cells) + "</tr>")
        elif ln.startswith("## "):
            body.append(f"<h2>{h.escape(ln[3:])}</h2>")
        elif ln.startswith("!["):
            pic = folder / report["detection_picture"]
            if pic.is_file():
                data = base64.b64encode(pic.read_bytes()).decode()
                body.append(f'<p><img alt="teacher vs deliverables" src="data:image/png;base64,{data}"></p>')
        elif ln:
            body.append(f"<p>{h.escape(ln)}</p>")
    out, table = [], []
    for b in body:   # group consecutive rows into tables
        if b.startswith("<tr"):
            table.append(b)
            continue
        if table:
            out.append("<table>" + "".join(table) + "</table>")
            table = []
        out.append(b)
    if table:
        out.append("<table>" + "".join(table) + "</table>")
    return "<section id=\"detection\">" + "".join(out) + "</section>"
