"""One latency method for every backend: warm-up, repeated timed runs, percentiles, a confidence
interval of the median, and the host facts the figure was measured on."""
from __future__ import annotations

import math
import os
import platform
import time
from functools import lru_cache
from typing import Callable

import numpy as np

INTERESTING_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "fma", "f16c", "asimd", "asimddp")


@lru_cache(maxsize=1)
def host_facts() -> dict:
    cpu, flags = platform.processor() or platform.machine(), []
    try:
        info = open("/proc/cpuinfo").read()
        for line in info.splitlines():
            key, _, val = line.partition(":")
            if key.strip() == "model name" and cpu in ("", platform.machine(), platform.processor()):
                cpu = val.strip()
            if key.strip() in ("flags", "Features"):
                have = set(val.split())
                flags = [f for f in INTERESTING_FLAGS if f in have]
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "machine": platform.machine(), "flags": flags,
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version()}


def median_ci(samples: np.ndarray, z: float = 1.96) -> tuple[float, float]:
    """Distribution-free 95% confidence interval of the median from order statistics."""
    s = np.sort(samples)
    n = len(s)
    half = z * math.sqrt(n) / 2
    lo = max(0, int(math.floor(n / 2 - half)))
    hi = min(n - 1, int(math.ceil(n / 2 + half)))
    return float(s[lo]), float(s[hi])


def summarize(ms: np.ndarray) -> dict:
    lo, hi = median_ci(ms)
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "min_ms": float(ms.min()),
        "p50_ci95_ms": [lo, hi],
        "runs": int(len(ms)),
    }


def measure(fn: Callable[[], object], warmup: int = 20, runs: int = 200, threads: int | None = None) -> dict:
    """Time `fn()` (one inference on prepared input): `warmup` untimed calls, then `runs` timed ones."""
    for _ in range(warmup):
        fn()
    ms = np.empty(runs)
    for i in range(runs):
        t0 = time.perf_counter_ns()
        fn()
        ms[i] = (time.perf_counter_ns() - t0) / 1e6
    out = summarize(ms)
    out.update({"warmup": warmup, "threads": threads, "where": "host", "host": host_facts(),
                "samples_ms": [round(float(v), 5) for v in ms]})
    return out
