"""A model's inputs by name: arrays of any dtype and rank sharing their first (sample) axis.

`Inputs` is what every stage, runner and calibration set passes around. A model takes them as its
`forward()` parameters, in the order the data declares (the data's names are checked against the
forward signature at load). A single input stored as `x_<split>` keeps the name "input" in ONNX
and is passed positionally, as before.

Kinds: "image" (4-D, normalized with mean/std: uint8 is scaled to 0..1 first), "float" (any other
float array, passed as float32 as stored), "int" (token ids, masks, indices: int64, never
normalized and never quantized; engines that want int32 get int32, recorded in the manifest).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from pipeline.errors import UserError

LEGACY = "input"      # the ONNX name of a single input stored as x_<split>
KINDS = ("image", "float", "int")


@dataclass(frozen=True)
class InputSpec:
    name: str
    kind: str                  # image | float | int
    dtype: str                 # as stored: uint8, float32, int64, ...
    shape: tuple[int, ...]     # per sample (no batch axis)

    def as_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "stored_dtype": self.dtype,
                "dtype": "int64" if self.kind == "int" else "float32", "shape": list(self.shape)}


def kind_of(a: np.ndarray) -> str:
    if a.dtype.kind in "iub":
        return "image" if a.dtype == np.uint8 and a.ndim == 4 else "int"
    if a.dtype.kind == "f":
        return "image" if a.ndim == 4 else "float"
    raise UserError(f"an input array is {a.dtype}", "store inputs as uint8/float images, float arrays or integer ids")


class Inputs:
    """Named arrays sharing their first axis. Index it like an array (a slice or index array gives an
    Inputs of those samples), by name for one array; `len()` is the number of samples."""

    def __init__(self, arrays: dict[str, np.ndarray], positional: bool = False):
        if not arrays:
            raise UserError("no input arrays", "store at least one input, e.g. x_train")
        lengths = {k: len(v) for k, v in arrays.items()}
        if len(set(lengths.values())) > 1:
            raise UserError(f"inputs differ in sample count: {lengths}", "give every input one row per sample")
        self.arrays = dict(arrays)
        self.positional = positional and len(arrays) == 1

    @classmethod
    def of(cls, x) -> "Inputs":
        """An Inputs from an Inputs, a dict of arrays, or one array (a single positional input)."""
        if isinstance(x, Inputs):
            return x
        if isinstance(x, dict):
            return cls(x)
        return cls({LEGACY: np.asarray(x)}, positional=True)

    @property
    def names(self) -> list[str]:
        return list(self.arrays)

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def __getitem__(self, key):
        if isinstance(key, str):
            return self.arrays[key]
        if isinstance(key, (int, np.integer, tuple)):    # one sample or an element: array semantics
            return self.single[key]
        return Inputs({k: v[key] for k, v in self.arrays.items()}, self.positional)

    def __iter__(self) -> Iterator[str]:
        return iter(self.arrays)

    def items(self):
        return self.arrays.items()

    def values(self):
        return self.arrays.values()

    @property
    def single(self) -> np.ndarray:
        """The one array of a single-input model."""
        if len(self.arrays) != 1:
            raise UserError(f"this step takes a single-input model; the model has inputs {self.names}",
                            "use a backend or setting that supports several inputs")
        return next(iter(self.arrays.values()))

    # A single-input Inputs also reads as its array (np.asarray, .shape, .dtype, .ndim), for code that
    # knows its model has one input.
    def __array__(self, dtype=None, copy=None):
        a = self.single
        return a if dtype is None else a.astype(dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.single.shape

    @property
    def dtype(self):
        return self.single.dtype

    @property
    def ndim(self) -> int:
        return self.single.ndim

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(int(d) for d in v.shape[1:]) for k, v in self.arrays.items()}

    def torch(self, device="cpu") -> tuple:
        """The arrays as torch tensors, in input order (the model's forward parameters)."""
        import torch
        return tuple(torch.from_numpy(np.ascontiguousarray(v)).to(device) for v in self.arrays.values())

    def call(self, model, device="cpu"):
        """model(*inputs): the forward parameters in the data's order."""
        return model(*self.torch(device))

    def bytes_hash(self, h) -> None:
        """Feed the arrays into hash `h`: names too, except for a single positional input, which hashes as the
        plain array always did (committed calibration manifests record that fingerprint)."""
        for k, v in self.arrays.items():
            h.update(str((v.dtype, v.shape) if self.positional else (k, v.dtype, v.shape)).encode())
            for i in range(0, len(v), 256):      # in slices: a memory-mapped array is never read whole
                h.update(np.ascontiguousarray(v[i:i + 256]).tobytes())

