"""Interleaved timing of two Runners for the gate (the method and its measured error rates: the
docstring of pipeline/report/gate.py)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.config import Target
from pipeline.errors import UserError
from pipeline.latency import median_ci

DEFAULT_ROUNDS = 60          # interleaved rounds (pairs of bursts)
MIN_ROUNDS = 5               # fewer cannot give a confidence interval narrower than the whole sample
BURST = 5                    # timed inferences per burst: short, so the two halves of a round are close in time
BURST_QUANTILE = 0.25        # each burst's statistic: its lower quartile (see the module docstring)
TIMING_THREADS = 1           # interleaved timing threads unless --threads (see the module docstring)
WARMUP = 20                  # untimed inferences per model before the first round


@dataclass(frozen=True)
class Interleaved:
    """Interleaved timing of a baseline and a candidate: per-round ratios candidate / baseline, and the
    medians over rounds of each side's per-burst statistic (ms)."""

    ratios: tuple[float, ...]
    ratio: float
    ci95: tuple[float, float]
    baseline_ms: float
    candidate_ms: float
    burst: int


def timing_input(runner: Any, target: Target) -> np.ndarray:
    """A fixed random batch-1 input in the runner's input shape (or the target's when the model's is dynamic)."""
    shape = list(getattr(runner, "input_shape", None) or [])
    if not shape or any(d is None for d in shape[1:]):
        if target.input_shape is None:
            raise UserError(f"the input shape of {getattr(runner, 'path', 'the model')} is not fixed",
                            "set input_shape in the target profile")
        shape = list(target.input_shape)
    shape[0] = 1 if shape[0] is None else shape[0]
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def time_interleaved(base: Any, cand: Any, x: np.ndarray, rounds: int = DEFAULT_ROUNDS, burst: int = BURST,
                     warmup: int = WARMUP, quantile: float = BURST_QUANTILE) -> Interleaved:
    """Time two Runners in alternation (see the module docstring); `x` is one normalized NCHW input.
    `quantile` picks each burst's statistic (0.5: medians)."""
    if rounds < MIN_ROUNDS:
        raise UserError(f"{rounds} interleaved rounds are too few for a confidence interval",
                        f"use --interleaved-runs {MIN_ROUNDS} or more (0 compares the stored figures)")
    if burst < 1:
        raise UserError(f"a burst of {burst} runs", "use at least 1 run per burst")
    xb, xc = base.prepare(x), cand.prepare(x)
    for _ in range(warmup):
        base.run_raw(xb)
        cand.run_raw(xc)

    def burst_stat(runner: Any, inp: np.ndarray) -> float:
        runner.run_raw(inp)  # untimed: the other model ran last, its caches are cold
        ms = np.empty(burst)
        for i in range(burst):
            t0 = time.perf_counter_ns()
            runner.run_raw(inp)
            ms[i] = (time.perf_counter_ns() - t0) / 1e6
        return float(np.quantile(ms, quantile))

    b_ms, c_ms = np.empty(rounds), np.empty(rounds)
    for r in range(rounds):
        if r % 2 == 0:
            b_ms[r] = burst_stat(base, xb)
            c_ms[r] = burst_stat(cand, xc)
        else:
            c_ms[r] = burst_stat(cand, xc)
            b_ms[r] = burst_stat(base, xb)
    ratios = c_ms / b_ms
    lo, hi = median_ci(ratios)
    return Interleaved(ratios=tuple(float(v) for v in ratios), ratio=float(np.median(ratios)), ci95=(lo, hi),
                       baseline_ms=float(np.median(b_ms)), candidate_ms=float(np.median(c_ms)), burst=burst)
