"""The task contract: what differs between a classifier, a regressor, a detector, ... .

A task owns how the data's targets are read and checked, whether a model's outputs fit them, the
distillation loss, the metrics and their direction, and what "agreement" between two models' outputs
means (the INT8 fallback and the golden samples use it). Stages never look at labels or logits
themselves: they ask the run's task. A user plug-in (`--task FILE.py:NAME`) subclasses `Task`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np


@dataclass(frozen=True)
class Metric:
    name: str                   # "top1", "mae", ...
    higher_is_better: bool
    unit: str = ""              # "fraction" (0..1) or the targets' own unit

    @property
    def direction(self) -> str:
        return "higher is better" if self.higher_is_better else "lower is better"

    def as_dict(self) -> dict:
        return {"name": self.name, "higher_is_better": self.higher_is_better, "direction": self.direction,
                "unit": self.unit}

    def worse_by(self, base: float, value: float) -> float:
        """How much worse `value` is than `base` in this metric's units (negative: better)."""
        return (base - value) if self.higher_is_better else (value - base)


class Task(ABC):
    name: ClassVar[str]
    metrics: ClassVar[tuple[Metric, ...]]         # the first is the primary metric: budgets and the gate use it
    batch_metric: ClassVar[bool] = True           # cheap enough to score every training batch (progress lines)
    head_layers: ClassVar[bool] = False           # several layers feed the outputs (a detector head): prune none of them

    def configure(self, config) -> None:
        """Read the task's own config section, if it has one (called once per run)."""

    def details(self, outputs: np.ndarray, y: np.ndarray) -> dict:
        """Extra per-artifact figures for the report (per-class AP, example detections, ...); none by default."""
        return {}

    def pipeline_latency(self, run, raw, normalize, warmup: int, runs: int, threads: int) -> dict | None:
        """p50 of pre-processing, inference, post-processing and end to end on one raw sample, where the
        task has steps around the model (a detector's letterbox and decode + NMS); None otherwise.
        `run(model_input) -> outputs`, `normalize(raw) -> model input`."""
        return None

    def manifest_section(self, ds) -> dict | None:
        """What the embedded engineer needs beyond inputs and outputs (a detector: layout, strides, letterbox,
        thresholds, postprocess.py), as manifest.json's section named after the task; None: nothing."""
        return None

    def golden_extra(self, outputs: np.ndarray) -> dict:
        """Arrays added to golden.npz from the deliverable's golden outputs (a detector: its boxes)."""
        return {}

    def in_graph_nms(self, num_classes: int) -> dict | None:
        """{layout, conf, iou, max_det} when the engine should end the graph with its own NMS; None: never."""
        return None

    def fallback_first(self, output_layers: list[str]) -> list[str]:
        """Layers the INT8 fallback keeps in float first, before any sensitivity ranking, given the weighted
        layers feeding the outputs (engine names; pipeline/compress/output_tail.py has OUTPUT_TAIL)."""
        return []

    def cache_key(self) -> dict:
        """The task's settings that change results (in every stage's fingerprint); none by default."""
        return {}

    @property
    def primary(self) -> Metric:
        return self.metrics[0]

    @abstractmethod
    def read_targets(self, y: np.ndarray, split: str, where: str) -> np.ndarray:
        """The split's targets checked and converted (UserError naming what is wrong and the --task to use)."""

    @abstractmethod
    def check_outputs(self, outputs: np.ndarray, ds) -> None:
        """Refuse (UserError) a model whose outputs do not fit this task and the data's targets."""

    @abstractmethod
    def evaluate(self, outputs: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """Every metric of `outputs` against targets `y`: {metric name: value}."""

    @abstractmethod
    def agreement(self, outputs: np.ndarray, reference: np.ndarray) -> float:
        """0..1: how far `outputs` agree with a reference model's outputs on the same inputs."""

    @abstractmethod
    def distill_loss(self, student, teacher, y, temperature: float, alpha: float):
        """The distillation loss of torch outputs `student` against `teacher` (and targets `y`)."""

    def score(self, outputs: np.ndarray, y: np.ndarray) -> float:
        return float(self.evaluate(outputs, y)[self.primary.name])

    def describe(self) -> dict:
        return {"name": self.name, "metric": self.primary.as_dict(), "metrics": [m.as_dict() for m in self.metrics]}
