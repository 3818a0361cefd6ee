"""pipeline/stages/report.py: a report that validates against its schema and says where each figure is from."""
from __future__ import annotations

import json

from pipeline.report import schema


def test_report_validates_and_labels_host_figures(small_run):
    report = json.loads((small_run / "report.json").read_text())
    schema.validate(report)
    jetson = next(t for t in report["targets"] if t["name"] == "jetson")
    assert jetson["measured"]["latency_p50_ms"] is None            # no device figure was measured
    assert any("says nothing about TensorRT speed" in n for n in jetson["notes"])
    assert all(a["latency_where"] in (None, "host") for a in report["artifacts"])
    prune = json.loads((small_run / "prune" / "stage.json").read_text())["metrics"]
    assert report["pruning"]["macs_fraction"] == prune["macs_fraction"]
    assert report["pruning"]["excluded_groups"] == [] and "## Pruning" in (small_run / "report.md").read_text()
