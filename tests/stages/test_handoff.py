"""pipeline/stages/handoff.py: per-target folders whose manifest lists every file, with the engine's tolerances."""
from __future__ import annotations

import json

from pipeline import backends
from pipeline.config import load_target
from pipeline.hashing import sha256_file


def test_manifest_lists_every_file_with_its_hash(small_run):
    for target in ("jetson", "android"):
        tdir = small_run / "handoff" / target
        man = json.loads((tdir / "manifest.json").read_text())
        shipped = {p.name for p in tdir.iterdir()} - {"manifest.json", "README.md"}
        assert set(man["files"]) == shipped
        assert all(sha256_file(tdir / n) == h for n, h in man["files"].items())
        engine = backends.get(man["backend"])
        want = engine.golden_tolerance(load_target(target), {})
        assert man["golden"]["min_argmax_agreement"] == want.min_argmax_agreement
        assert man["device_toolchain"] == engine.device_toolchain(load_target(target))
    assert "build_engine.sh" in (small_run / "handoff" / "jetson" / "README.md").read_text()
