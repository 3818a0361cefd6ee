"""Wall time of each stage of the default run, cold and cached.

    .venv/bin/python benchmarks/stage_times.py [--target jetson] [--keep DIR]

Runs `python -m pipeline run --target T` into a fresh folder (cold), then the same command again
(cached), and prints each stage's wall time from its stage.json plus the end-to-end times.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.latency import host_facts  # noqa: E402


def timed_run(target: str, out: Path) -> float:
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "pipeline", "run", "--target", target, "--out", str(out)], cwd=ROOT,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="jetson")
    ap.add_argument("--keep", type=Path, help="run folder to use and keep (default: a temporary one)")
    args = ap.parse_args()
    out = args.keep or Path(tempfile.mkdtemp(prefix="stage-times-"))
    shutil.rmtree(out, ignore_errors=True)
    cold = timed_run(args.target, out)
    cold_stages = {p.parent.name: json.loads(p.read_text())["wall_s"] for p in sorted(out.glob("*/stage.json"))}
    cached = timed_run(args.target, out)
    report = json.loads((out / "report.json").read_text())
    print(f"# stage_times: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, target {args.target}, host "
          f"{host_facts()['cpu']} ({host_facts()['cores']} cores)\n")
    print("| stage | cold s | second run |")
    print("| --- | ---: | --- |")
    order = list(report["stages"]) + [s for s in cold_stages if s not in report["stages"]]
    for s in order:
        print(f"| {s} | {cold_stages.get(s, float('nan')):.1f} | {report['stages'].get(s, 'cached')} |")
    print(f"| **end to end** (process wall time) | {cold:.1f} | {cached:.1f} s |")
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
