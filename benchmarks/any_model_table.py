"""The five model kinds of tests/e2e/any_models.py through the whole pipeline on real engines.

    .venv/bin/python benchmarks/any_model_table.py [--steps 150] [--keep DIR] [--only REGEX]

For each kind (two-input image + metadata, int64 token-id encoder, 1-D conv on (N, C, T) audio, tabular
regression, 2-layer LSTM): make its data, train a teacher briefly, run
`python -m pipeline run --target x86-cpu,android` (distill.epochs=1), and print one row per kind:
metric | teacher | ORT INT8 | ORT shipped (precision "auto") | LiteRT INT8 | host p50 of each | what the
report says of each target's budgets. Latencies are this host's, measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

import any_models as am  # noqa: E402

from pipeline.latency import host_facts  # noqa: E402

KINDS = {   # kind: (make, factory, task)
    "two-input (image + meta)": (am.make_two_input, "two_input", "classification"),
    "token encoder (ids + mask)": (am.make_tokens, "tiny_encoder", "classification"),
    "1-D conv (N, C, T)": (am.make_audio, "conv1d", "classification"),
    "tabular regression": (am.make_tabular, "tabular", "regression"),
    "LSTM (N, T, C)": (am.make_sequence, "lstm", "classification"),
}


def fmt(v, f=".4f"):
    return "n/a" if v is None else format(v, f)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=150, help="teacher training steps")
    ap.add_argument("--keep", help="keep the run folders here")
    ap.add_argument("--only", help="run the kinds whose name matches this regex")
    a = ap.parse_args()
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="any-models-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"host: {host_facts()['cpu']} ({host_facts()['cores']} cores); teacher steps {a.steps}; runs in {work}\n")
    rows = []
    for kind, (make, factory, task) in KINDS.items():
        if a.only and not re.search(a.only, kind):
            continue
        slug = factory
        npz, pt, out = work / f"{slug}.npz", work / f"{slug}.pt", work / f"run-{slug}"
        make(npz)
        torch.save(am.train(getattr(am, factory)(), npz, steps=a.steps, regression=task == "regression").state_dict(), pt)
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "pipeline", "run", "--task", task, "--model",
                            f"tests/e2e/any_models.py:{factory}", "--weights", str(pt), "--data", str(npz),
                            "--target", "x86-cpu,android", "--out", str(out), "--set", "distill.epochs=1"],
                           cwd=ROOT, capture_output=True, text=True)
        wall = time.monotonic() - t0
        if r.returncode:
            rows.append((kind, f"FAILED: {r.stderr.strip().splitlines()[-1]}"))
            continue
        rep = json.loads((out / "report.json").read_text())
        art = {x["name"]: x for x in rep["artifacts"]}
        tgt = {t["name"]: t for t in rep["targets"]}
        metric = rep["metric"]["name"]

        def cell(name):
            x = art.get(name)
            return f"{fmt(x and x['accuracy'])} / {fmt(x and x['latency_p50_ms'], '.3f')} ms" if x else "n/a"
        says = "; ".join(f"{n}: ships {t['deliverable'].split(': ')[-1]}, "
                         f"{'budgets met' if all(v is not False for v in t['budgets_met'].values()) else 'missed ' + ', '.join(k for k, v in t['budgets_met'].items() if v is False)}"
                         for n, t in tgt.items())
        rows.append((kind, f"{metric} ({rep['metric']['direction']}) | {cell('teacher')} | {cell('x86-cpu: INT8 ONNX')} | "
                           f"{cell('x86-cpu: FP32 ONNX')} | {cell('android: INT8 TFLite')} | {wall:.0f} s | {says}"))
    print("| model kind | metric | teacher | ORT INT8 | ORT FP32 | LiteRT INT8 | run wall | the report says |")
    print("| --- | --- | --- | --- | --- | --- | ---: | --- |")
    for kind, rest in rows:
        print(f"| {kind} | {rest} |")
    print("\ncells: metric / host p50 (batch 1, this host). ORT ships INT8 only when it is faster and within budget.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
