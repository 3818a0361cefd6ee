"""Input shapes of a run: named shapes (`--input-shape name=1x3x224x224`) and dynamic axes, declared once
(`--dynamic batch=1..32`, `--dynamic seq=16..128`, `--dynamic NAME:AXIS=lo..hi`).

The axes drive the ONNX export (symbolic dims), the TensorRT optimization profiles (min/opt/max per
input), and the latency table (one row per shape). Engines that need a fixed shape (TFLite) get the
data's shape, which the run records.

- `batch` is axis 0 of every input (and of the output);
- `seq` is axis 1 of every integer input of rank 2 (token ids, attention masks, token types: (N, L));
  a run whose inputs have no such axis is refused, naming the explicit form;
- `NAME:AXIS` is one axis of one input (e.g. `audio:2=8000..32000` for (N, C, T) audio).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from pipeline.errors import UserError

_AXIS = re.compile(r"^\s*(batch|seq|[A-Za-z_]\w*:\d+)\s*=\s*(\d+)\s*\.\.\s*(\d+)\s*$")
_SHAPE = re.compile(r"^\s*(?:([A-Za-z_]\w*)\s*=)?\s*(\d+(?:\s*[x,]\s*\d+)*)\s*$")
MAX_POINTS = 4          # latency rows per dynamic axis


def parse_dynamic(items: list[str] | dict | None) -> dict[str, list[int]]:
    """`["batch=1..32", "seq=16..128"]` (or one comma-separated string) -> {"batch": [1, 32], "seq": [16, 128]}."""
    if not items:
        return {}
    if isinstance(items, dict):
        return {str(k): [int(v) for v in r] for k, r in items.items()}
    out: dict[str, list[int]] = {}
    for item in ([items] if isinstance(items, str) else items):
        for part in filter(None, (p.strip() for p in item.split(","))):
            m = _AXIS.match(part)
            if not m:
                raise UserError(f"--dynamic {part!r} is not AXIS=LO..HI",
                                "write e.g. --dynamic batch=1..32, --dynamic seq=16..128 or --dynamic NAME:AXIS=8..64")
            lo, hi = int(m.group(2)), int(m.group(3))
            if not 1 <= lo <= hi:
                raise UserError(f"--dynamic {part!r}: the range must be 1 <= LO <= HI", "e.g. --dynamic batch=1..32")
            out[m.group(1)] = [lo, hi]
    return out


def parse_input_shapes(items: list[str] | None) -> dict[str, list[int]] | None:
    """`["input_ids=1x128", "attention_mask=1x128"]` -> {name: shape}; an unnamed `1x3x32x32` names "input"."""
    if not items:
        return None
    out: dict[str, list[int]] = {}
    for item in ([items] if isinstance(items, str) else items):
        m = _SHAPE.match(item)
        if not m:
            raise UserError(f"--input-shape {item!r} is not a shape", "write NAME=1x3x224x224 (or 1x3x224x224 for one input)")
        out[m.group(1) or "input"] = [int(v) for v in re.split(r"\s*[x,]\s*", m.group(2))]
    return out


@dataclass(frozen=True)
class DynAxis:
    input: str
    axis: int
    symbol: str
    lo: int
    hi: int

    def points(self) -> list[int]:
        """The sizes the latency table shows: lo and hi of a batch; lo, powers of two between and hi of
        any other axis (at most MAX_POINTS)."""
        pts = {self.lo, self.hi}
        if self.axis == 0:
            return sorted(pts)
        p = 1
        while p < self.hi:
            if p > self.lo:
                pts.add(p)
            p *= 2
        pts = sorted(pts)
        if len(pts) > MAX_POINTS:       # keep both ends and the largest powers below hi
            pts = [pts[0], *pts[-(MAX_POINTS - 1):]]
        return pts


class Dynamic:
    """The run's dynamic axes resolved against its inputs (names, kinds and per-sample shapes)."""

    def __init__(self, declared: dict[str, list[int]], specs):
        self.declared = dict(declared)
        self.specs = {s.name: s for s in specs}
        self.axes: list[DynAxis] = []
        for key, (lo, hi) in self.declared.items():
            self.axes += self._resolve(key, lo, hi)

    def _resolve(self, key: str, lo: int, hi: int) -> list[DynAxis]:
        name, _, axis_s = key.partition(":")
        if not (key in ("batch", "seq") or axis_s.isdigit()) or not 1 <= lo <= hi:
            raise UserError(f"dynamic axis {key!r}={lo}..{hi} is not batch, seq or NAME:AXIS with 1 <= LO <= HI",
                            "write e.g. --dynamic batch=1..32, --dynamic seq=16..128 or --dynamic NAME:AXIS=8..64")
        if key == "batch":
            return [DynAxis(n, 0, "batch", lo, hi) for n in self.specs]
        if key == "seq":
            seq = [n for n, s in self.specs.items() if s.kind == "int" and len(s.shape) == 1]
            if not seq:
                raise UserError(f"--dynamic seq: no input is a (N, L) integer sequence (inputs: "
                                f"{', '.join(f'{n} {list(s.shape)}' for n, s in self.specs.items())})",
                                "name the axis instead, e.g. --dynamic NAME:AXIS=8..64")
            return [DynAxis(n, 1, "seq", lo, hi) for n in seq]
        axis = int(axis_s)
        if name not in self.specs:
            raise UserError(f"--dynamic {key}: the model has no input '{name}'", f"inputs: {', '.join(self.specs)}")
        rank = len(self.specs[name].shape) + 1
        if not 0 <= axis < rank:
            raise UserError(f"--dynamic {key}: input '{name}' has {rank} axes", f"give an axis from 0 to {rank - 1}")
        return [DynAxis(name, axis, "batch" if axis == 0 else f"{name}_{axis}", lo, hi)]

    def __bool__(self) -> bool:
        return bool(self.axes)

    @property
    def batch(self) -> bool:
        return "batch" in self.declared

    def onnx_axes(self, output: str = "logits") -> dict[str, dict[int, str]]:
        """{input name: {axis: symbol}} for torch.onnx.export, the output's batch axis included."""
        out: dict[str, dict[int, str]] = {}
        for a in self.axes:
            out.setdefault(a.input, {})[a.axis] = a.symbol
        if self.batch:
            out[output] = {0: "batch"}
        return out

    def check_data(self, batch_shapes: dict[str, list[int]]) -> None:
        """The data's own size on every dynamic axis must lie in its range (it is the export example)."""
        for a in self.axes:
            size = batch_shapes[a.input][a.axis]
            if a.axis and not a.lo <= size <= a.hi:
                raise UserError(f"--dynamic {a.symbol}={a.lo}..{a.hi} excludes the data's {a.input} size {size}",
                                f"widen the range to include {size}")

    def profiles(self, batch_shapes: dict[str, list[int]]) -> dict[str, list[list[int]]]:
        """TensorRT optimization profile {input: [min, opt, max]}: lo / hi on every dynamic axis (kernels
        tuned for the largest shape), the data's size elsewhere. Empty when nothing is dynamic."""
        if not self:
            return {}
        prof = {n: [list(s), list(s), list(s)] for n, s in batch_shapes.items()}
        for a in self.axes:
            prof[a.input][0][a.axis], prof[a.input][1][a.axis], prof[a.input][2][a.axis] = a.lo, a.hi, a.hi
        return prof

    def latency_shapes(self, batch_shapes: dict[str, list[int]]) -> list[tuple[str, dict[str, list[int]]]]:
        """(label, {input: shape}) per latency row: every combination of each symbol's points."""
        symbols: dict[str, DynAxis] = {}
        for a in self.axes:
            symbols.setdefault(a.symbol, a)
        rows: list[tuple[str, dict[str, list[int]]]] = [("", {n: list(s) for n, s in batch_shapes.items()})]
        for sym, a in symbols.items():
            grown = []
            for label, shapes in rows:
                for p in a.points():
                    new = {n: list(s) for n, s in shapes.items()}
                    for b in self.axes:
                        if b.symbol == sym:
                            new[b.input][b.axis] = p
                    grown.append((f"{label} {sym}={p}".strip(), new))
            rows = grown
        return rows if self else []


def resize_to(arrays: dict[str, np.ndarray], shapes: dict[str, list[int]]) -> dict[str, np.ndarray]:
    """Real samples brought to other sizes along any axis: cut, or repeated cyclically (np.resize per axis).
    For timing and for checking a dynamic export, not for accuracy."""
    out = {}
    for n, a in arrays.items():
        for axis, size in enumerate(shapes[n]):
            if a.shape[axis] != size:
                idx = np.arange(size) % a.shape[axis]
                a = np.take(a, idx, axis=axis)
        out[n] = np.ascontiguousarray(a)
    return out
