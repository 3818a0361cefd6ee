"""pipeline/stages/evaluate.py: every declared artifact gets a row; only what runs here gets figures."""
from __future__ import annotations

import json


def test_every_declared_artifact_has_a_row_and_only_measured_numbers(small_run):
    ev = json.loads((small_run / "evaluate" / "stage.json").read_text())["metrics"]
    rows = {r["name"]: r for r in ev["results"]}
    declared = [a["name"] for s in ("load", "prune", "distill", "compile-jetson", "compile-android")
                for a in json.loads((small_run / s / "stage.json").read_text())["metrics"].get("artifacts", [])]
    assert sorted(rows) == sorted(declared)
    for r in rows.values():
        if r.get("runs_here", True):
            assert 0 <= r["accuracy"] <= 1 and r["latency_p50_ms"] > 0 and r["size_bytes"] > 0
        else:            # the TensorRT engine without TensorRT here: no number at all
            assert r["accuracy"] is None and r["latency_p50_ms"] is None and r["latency"] is None
    assert ev["test_samples"] == 300
