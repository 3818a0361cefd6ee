"""The pieces report.html is drawn with (pipeline/report/html.py, plots.py): escaping and number
formatting, table cells, tick choice, label placement, and the artifact lookups (teacher, pruned,
distilled, a target's INT8 artifact and engine; host proxies: pipeline/report/render.py)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape
from typing import Any, Iterable, Sequence

NOT_MEASURED = "not measured here"
SHARED_STAGES = (("load", "teacher"), ("prune", "pruned"), ("distill", "distilled"))
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")
SHARED_COLOR = "#555f6d"
FONT_PX = 12
CHAR_W = 6.6  # average glyph width at FONT_PX in the sans-serif stack below, for label boxes
# Where a scatter label may go, nearest first: (step away from the point, vertical offset in px).
_LABEL_SLOTS = [(k, dy) for k in range(6) for dy in (0, -15 * (k + 1), 15 * (k + 1))]

# ---------------------------------------------------------------- formatting
def _e(v: Any) -> str:
    return escape(str(v), quote=True)


def _unit(v: float | None, fmt: str, unit: str, na: str = NOT_MEASURED) -> str:
    """`v` formatted with its unit, or `na`; escaped."""
    return _e(na if v is None else f"{format(v, fmt)} {unit}")


def _bytes(n: float | None, na: str = "n/a") -> str:
    if n is None:
        return na
    if n >= 1e6:
        return f"{n / 1e6:.2f} MB"
    return f"{n / 1e3:.1f} KB"


def _pct_change(new: float | None, old: float | None) -> float | None:
    return None if new is None or old in (None, 0) else (new / old - 1) * 100


def _cell(text: str, cls: str = "") -> str:
    return f'<td class="{cls}">{text}</td>' if cls else f"<td>{text}</td>"


def _numcell(v: float | int | None, fmt: str, na: str = NOT_MEASURED, suffix: str = "") -> str:
    if v is None:
        return _cell(_e(na), "num na")
    return _cell(_e(format(v, fmt)) + suffix, "num")


def _change(pct: float | None) -> str:
    """A signed percentage of a lower-is-better figure: green when it fell, red when it rose."""
    if pct is None:
        return ""
    cls = "down" if pct < 0 else ("up" if pct >= 0.05 else "")
    return f' <span class="{cls}">({pct:+.1f}%)</span>' if cls else f" ({pct:+.1f}%)"


def _table(head: Sequence[tuple[str, bool]], rows: Iterable[str]) -> str:
    ths = "".join(f'<th class="num">{_e(h)}</th>' if num else f"<th>{_e(h)}</th>" for h, num in head)
    return f'<div class="scroll"><table><thead><tr>{ths}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def _nice_ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    """Round tick values covering [lo, hi] (1, 2, 2.5, 5 x 10^k steps)."""
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0) * 0.1
    raw = (hi - lo) / max(1, n - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks, v = [], start
    while v < hi + step * 0.999:
        ticks.append(round(v, 10))
        v += step
    return ticks


def _tick_label(v: float, ticks: Sequence[float]) -> str:
    """`v` with as many decimals as the tick step needs (0.25 -> 2, 5 -> 0)."""
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    decimals = next((d for d in range(5) if abs(round(step, d) - step) < 1e-9 * max(1.0, step)), 4)
    return f"{v:.{decimals}f}"


def _text_w(s: str) -> float:
    return len(s) * CHAR_W


# ---------------------------------------------------------------- artifacts
def _color_of(report: dict) -> dict[str | None, str]:
    names = [t["name"] for t in report.get("targets", [])]
    names += sorted({a["target"] for a in report["artifacts"] if a.get("target") and a["target"] not in names})
    colors: dict[str | None, str] = {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}
    colors[None] = SHARED_COLOR
    return colors


def _deliverables(report: dict) -> set[str]:
    """Names of the artifacts the targets ship (their `deliverable`)."""
    return {t["deliverable"] for t in report.get("targets", []) if t.get("deliverable")}


def _shared(report: dict, stage: str) -> dict | None:
    return next((a for a in report["artifacts"] if a["stage"] == stage and not a.get("target")), None)


def _int8_of(report: dict, target: str) -> dict | None:
    """The target's first INT8 artifact with a file (the quantized model, before any engine build)."""
    return next((a for a in report["artifacts"] if a.get("target") == target
                 and str(a.get("precision", "")).startswith("int8") and a.get("size_bytes") is not None), None)


def _engine_of(report: dict, t: dict, int8: dict | None) -> dict | None:
    """What the target's engine runs, when it is another artifact than the INT8 one: an artifact of the
    target's backend that is INT8 or the one precision selection chose (e.g. FP32 under "auto")."""
    return next((a for a in report["artifacts"] if a.get("target") == t["name"] and a is not int8
                 and a["backend"] == t["backend"]
                 and (str(a.get("precision", "")).startswith("int8") or a.get("selected") is True)), None)


@dataclass(frozen=True)
class _Point:
    x: float
    y: float
    label: str
    color: str
    deliverable: bool


Box = tuple[float, float, float, float]


def _place_label(cx: float, cy: float, w: float, placed: list[Box], bounds: Box) -> tuple[float, float, str, Box]:
    """Where the label of the point (cx, cy) goes: the nearest slot, right then left, inside `bounds`
    and overlapping no box in `placed`; the last slot tried when none is free."""
    for k, dy in _LABEL_SLOTS:
        for side in (1, -1):
            tx, ty = cx + side * (10 + 6 * k), cy + 4 + dy
            bx = tx if side > 0 else tx - w
            box = (bx, ty - FONT_PX + 1, bx + w, ty + 3)
            inside = box[0] >= bounds[0] and box[1] >= bounds[1] and box[2] <= bounds[2] and box[3] <= bounds[3]
            if inside and not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                return tx, ty, "start" if side > 0 else "end", box
    return tx, ty, "end", box
