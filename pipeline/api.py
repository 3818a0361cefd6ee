"""The Python API: what `python -m pipeline run` does, for notebooks and scripts.

    from pipeline import compress
    result = compress(model, data, target="jetson")
    result.report["targets"][0]["budgets_met"], result.report_html, result.deliverables["jetson"]

`model` is what `--model` takes (a spec string: "default", "FILE.py:FACTORY", "MODEL.pt2", "MODEL.onnx")
or an `nn.Module` object. A module is saved whole (`torch.save`) into the run folder's `.api/` and rebuilt
from there by every stage, in this process (so classes defined in a notebook resolve): it is your own
object, so `trust_model` is implied for it. `data` is what `--data` takes, or a dict of arrays in the
`.npz` layout (`x_train`, `y_train`, `x_test`, `y_test`, optional `classes`, `mean`, `std`), written to
`.api/data.npz`. `settings` are `--set` overrides as a dict ({"distill.epochs": 1}). Errors are the
CLI's: a `pipeline.errors.UserError` naming the problem and the fix.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

FACTORY = '''"""Written by pipeline.compress(): rebuilds the nn.Module it was given (saved whole beside this file)."""
import torch


def build():
    return torch.load(__file__.replace("model_factory.py", "model.pt"), weights_only=False)
'''


@dataclass
class CompressResult:
    run_dir: Path
    report: dict
    report_html: Path
    deliverables: dict[str, Path | None] = field(default_factory=dict)   # target -> file (None: built on device)
    verdicts: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"CompressResult({self.run_dir}: " + "; ".join(self.verdicts) + ")"


def _stage_model(model: Any, api_dir: Path) -> tuple[str, bool]:
    """A spec string for `model` and whether it must be trusted (an in-memory module: the caller's own)."""
    import torch
    if isinstance(model, (str, Path)):
        return str(model), False
    if not isinstance(model, torch.nn.Module):
        from pipeline.errors import UserError
        raise UserError(f"compress(model=...) got a {type(model).__name__}",
                        "pass an nn.Module or a --model spec string (default, FILE.py:FACTORY, MODEL.pt2, MODEL.onnx)")
    api_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.eval(), api_dir / "model.pt")
    (api_dir / "model_factory.py").write_text(FACTORY)
    return f"{api_dir / 'model_factory.py'}:build", True


def _stage_data(data: Any, api_dir: Path) -> str | None:
    import numpy as np
    if data is None or isinstance(data, (str, Path)):
        return None if data is None else str(data)
    if not isinstance(data, Mapping):
        from pipeline.errors import UserError
        raise UserError(f"compress(data=...) got a {type(data).__name__}",
                        "pass a --data spec (fashion-mnist, FILE.npz, DIR) or a dict of arrays "
                        "(x_train, y_train, x_test, y_test)")
    api_dir.mkdir(parents=True, exist_ok=True)
    np.savez(api_dir / "data.npz", **{k: np.asarray(v) for k, v in data.items()})
    return str(api_dir / "data.npz")


def compress(model: Any = "default", data: Any = None, target: str = "jetson", *, weights: str | None = None,
             task: str | None = None, settings: Mapping[str, Any] | None = None, out: str | Path | None = None,
             until: str | None = None, force: bool = False, trust_model: bool = False,
             verbose: bool = False) -> CompressResult:
    """Run the pipeline as `python -m pipeline run` would and return its report (see the module docstring)."""
    from pipeline.cli import default_run_dir
    from pipeline.config import build_run_config, load_targets
    from pipeline.runner import run_pipeline

    targets = load_targets(target)
    name = "default" if isinstance(model, (str, Path)) and str(model) in ("", "default") else (
        Path(str(model).split(":")[0]).stem if isinstance(model, (str, Path)) else type(model).__name__)
    run_dir = Path(out) if out else default_run_dir(name, targets)
    api_dir = run_dir / ".api"
    spec, implied_trust = _stage_model(model, api_dir)
    cfg = build_run_config(None, {"task": task, "model": spec, "weights": weights, "data": _stage_data(data, api_dir),
                                  "trust_model": (trust_model or implied_trust) or None},
                           [f"{k}={json.dumps(v)}" for k, v in (settings or {}).items()])
    run_pipeline(run_dir, cfg, targets, until=until, force=force, verbose=verbose)
    report_path = run_dir / "report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    from pipeline.report.render import verdict
    files = {a["name"]: a.get("file") for a in report.get("artifacts", [])}
    return CompressResult(
        run_dir=run_dir, report=report, report_html=run_dir / "report.html",
        deliverables={t["name"]: (run_dir / files[t["deliverable"]] if files.get(t.get("deliverable")) else None)
                      for t in report.get("targets", [])},
        verdicts=[verdict(report, t) for t in report.get("targets", [])])
