"""How much of the torchvision and timm model zoos the prune stage prunes, and what it leaves out.

    .venv/bin/python benchmarks/zoo_coverage.py [--only REGEX] [--max-params 60e6] [--reduction 0.5]
        [--target x86-cpu] [--timeout 900] [--json results.json] [--markdown table.md]

Needs torchvision and timm (`benchmarks/requirements-zoo.txt`, installed by `./setup.sh --test`).
For every torchvision classification architecture and a sample of timm families
(`pipeline/models/zoo.py`), built without pretrained weights with 10 classes at the smallest input
size of 64/96/112/224 it runs at, it runs the pipeline's own load and prune stages (the target's
round_to, the default criterion and global allocation) to −50% MACs on random data of that size, in a
subprocess of its own (memory, time limit), and prints a table: MACs before/after (the project's
counter, every module counted), the channel groups left unpruned with their root modules, whether the
pruned model's ONNX export ran in ONNX Runtime and matched torch (the stage checks it), and the error.
Architectures over `--max-params` parameters are listed as skipped (each pass deep-copies the model).
Outcomes: "pruned" (budget met, nothing excluded), "excluded" (budget met with groups left
unpruned), "short" (ran, budget not met), "refused" (a one-line UserError), "failed" (anything else).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = (64, 96, 112, 224)
FACTORY = """from pipeline.models import zoo
def build():
    return zoo.build({name!r}, {kwargs!r})
"""


def pick_size(name: str) -> tuple[int, dict, int]:
    """(input size, build kwargs, params) of the smallest size the architecture runs at."""
    import torch
    from pipeline.models import zoo
    last = None
    for size in SIZES:
        for kwargs in zoo.size_kwargs(name, size):
            try:
                m = zoo.build(name, kwargs).eval()
                with torch.no_grad():
                    m(torch.randn(1, 3, size, size))
                return size, kwargs, sum(p.numel() for p in m.parameters())
            except Exception as e:  # noqa: BLE001 -- try the next size
                last = e
    raise RuntimeError(f"runs at none of the sizes {SIZES}: {last.__class__.__name__}: {str(last)[:120]}")


def one(name: str, reduction: float, target: str, max_params: float) -> dict:
    """Build, load and prune one architecture; the row of the table."""
    import numpy as np
    import torch
    from pipeline.config import RunConfig, load_target
    from pipeline.data import resolve_data
    from pipeline.errors import UserError
    from pipeline.runner import Context, run_stage
    from pipeline.stages.load import LoadStage
    from pipeline.stages.prune import PruneStage
    torch.set_num_threads(1)
    row: dict = {"arch": name}
    t0 = time.perf_counter()
    try:
        size, kwargs, params = pick_size(name)
    except RuntimeError as e:
        return {**row, "outcome": "failed", "error": str(e)}
    row.update(size=size, params=params)
    if params > max_params:
        return {**row, "outcome": "skipped", "error": f"{params / 1e6:.0f}M parameters > --max-params"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "arch.py").write_text(FACTORY.format(name=name, kwargs=kwargs))
        rng = np.random.default_rng(0)
        np.savez(tmp / "data.npz", x_train=rng.integers(0, 256, (64, 3, size, size), dtype=np.uint8),
                 y_train=rng.integers(0, 10, 64), x_test=rng.integers(0, 256, (16, 3, size, size), dtype=np.uint8),
                 y_test=rng.integers(0, 10, 16))
        cfg = RunConfig(model=f"{tmp / 'arch.py'}:build", data=str(tmp / "data.npz"), trust_model=True)
        cfg.prune.macs_reduction, cfg.load.latency_runs, cfg.evaluate.test_limit = reduction, 5, 16
        tgt = load_target(target).model_copy(update={"input_shape": None})   # the zoo's input, not the profile's
        ctx = Context(tmp / "run", cfg, [tgt], lambda: resolve_data(cfg.data))
        try:
            run_stage(LoadStage(), ctx)
            m = run_stage(PruneStage(), ctx)["metrics"]
        except UserError as e:
            text = f"{e.problem} -- fix: {e.fix}"
            onnx = "no" if re.search(r"onnx|export", e.problem, re.I) else "-"
            return {**row, "outcome": "refused", "onnx_ok": onnx, "error": text[:300],
                    "wall_s": time.perf_counter() - t0}
        except Exception as e:  # noqa: BLE001 -- reported in the table
            return {**row, "outcome": "failed", "error": f"{e.__class__.__name__}: {str(e).splitlines()[0][:200]}",
                    "wall_s": time.perf_counter() - t0}
    met = m["search"].get("met", False)
    excluded = m.get("excluded_groups", [])
    return {**row, "macs_before": m["macs_before"], "macs_after": m["macs_after"], "fraction": m["macs_fraction"],
            "excluded": [f"{g['root']}: {g['reason'][:90]}" for g in excluded], "onnx_ok": "yes",
            "outcome": ("excluded" if excluded else "pruned") if met else "short", "error": "",
            "wall_s": time.perf_counter() - t0}


def table(rows: list[dict]) -> str:
    def macs(v):
        return f"{v / 1e6:.1f}M" if isinstance(v, (int, float)) else "-"
    out = ["| architecture | input | params | MACs before | MACs after (fraction) | excluded groups | ONNX ok | outcome | error |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        ex = r.get("excluded", [])
        ex_txt = f"{len(ex)}: {', '.join(e.split(':')[0] for e in ex[:3])}{' ...' if len(ex) > 3 else ''}" if ex else "0"
        frac = f"{macs(r.get('macs_after'))} ({r['fraction']:.3f})" if "fraction" in r else "-"
        out.append(f"| {r['arch']} | {r.get('size', '-')} | {r['params'] / 1e6:.1f}M | {macs(r.get('macs_before'))} | "
                   f"{frac} | {ex_txt} | {r.get('onnx_ok', '-')} | {r['outcome']} | "
                   f"{r.get('error', '').replace('|', '/')[:160]} |" if "params" in r else
                   f"| {r['arch']} | - | - | - | - | - | - | {r['outcome']} | {r.get('error', '')[:160]} |")
    counts = {k: sum(r["outcome"] == k for r in rows) for k in ("pruned", "excluded", "short", "refused", "failed", "skipped")}
    out.append("\n" + ", ".join(f"{k}: {v}" for k, v in counts.items()) + f" (of {len(rows)})")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="regular expression on the architecture names (tv/..., timm/...)")
    ap.add_argument("--max-params", type=float, default=60e6)
    ap.add_argument("--reduction", type=float, default=0.5, help="fraction of MACs to remove")
    ap.add_argument("--target", default="x86-cpu", help="target profile (its round_to is used)")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per architecture")
    ap.add_argument("--json", type=Path, help="write the rows here")
    ap.add_argument("--markdown", type=Path, help="write the table here")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print("ROW " + json.dumps(one(a.one, a.reduction, a.target, a.max_params)))
        return
    from pipeline.models import zoo
    names = zoo.architectures()
    if not names:
        sys.exit("zoo_coverage: torchvision/timm are not installed: .venv/bin/pip install --no-deps "
                 "-r benchmarks/requirements-zoo.txt (or ./setup.sh --test)")
    names = [n for n in names if not a.only or re.search(a.only, n)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rows = []
    for i, name in enumerate(names, 1):
        cmd = [sys.executable, __file__, "--one", name, "--reduction", str(a.reduction), "--target", a.target,
               "--max-params", str(a.max_params)]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout, env=env, cwd=ROOT)
            line = [ln for ln in p.stdout.splitlines() if ln.startswith("ROW ")]
            row = json.loads(line[-1][4:]) if line else {
                "arch": name, "outcome": "failed", "error": (p.stderr.strip().splitlines() or ["no output"])[-1][:200]}
        except subprocess.TimeoutExpired:
            row = {"arch": name, "outcome": "failed", "error": f"over {a.timeout} s"}
        rows.append(row)
        print(f"[{i}/{len(names)}] {name}: {row['outcome']} {row.get('fraction', '')} {row.get('error', '')[:100]}",
              flush=True)
        if a.json:
            a.json.write_text(json.dumps(rows, indent=1))
    text = table(rows)
    print(text)
    if a.markdown:
        a.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
