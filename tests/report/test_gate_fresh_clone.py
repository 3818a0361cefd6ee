"""The README's gate command, in a fresh clone (only the files git tracks: no runs/, no baseline run
folder): it either compares the deliverable's latency or does not say PASS (issue 20)."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The README's run command, made short: no training (the gate does not care how the model was made),
# few test samples and timing runs. Data, target and run folder are the README's.
SHORT = ["--set", "distill.enabled=false", "--set", "evaluate.test_limit=300",
         "--set", "evaluate.runs=20", "--set", "evaluate.warmup=5", "--set", "load.latency_runs=10"]


def fresh_clone(dest: Path) -> Path:
    """The tracked files of this tree as they are now (what a clone of this change holds)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def readme_gate_command() -> list[str]:
    text = re.sub(r"\\\n\s*", " ", (ROOT / "README.md").read_text())
    m = re.search(r"python -m pipeline (gate \S+ --baseline \S+)", text)
    assert m, "README.md shows no gate command"
    return m.group(1).split()


def test_readme_gate_in_a_fresh_clone_never_passes_blind(run_cli, tmp_path):
    clone = fresh_clone(tmp_path / "clone")
    gate_cmd = readme_gate_command()
    assert not (clone / "runs").exists()
    r = run_cli("run", "--target", "jetson", *SHORT, cwd=clone, timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    report = clone / gate_cmd[1]
    assert report.is_file(), f"the run did not write {gate_cmd[1]}, which the README's gate command reads"
    r = run_cli(*gate_cmd, cwd=clone)
    out = r.stdout + r.stderr
    compared = re.search(r"^  (PASS|FAIL) latency  jetson: INT8 QDQ ONNX \(host proxy\) \[(interleaved|stored)\]",
                         r.stdout, re.M)
    if compared:
        assert r.returncode in (0, 1), out
    else:   # nothing timed: never a pass; without a regression, the distinct outcome (exit 3)
        assert r.returncode != 0 and "gate: PASS" not in r.stdout, out
        assert "the latency of what the target ships was not compared" in r.stdout and "--allow-no-latency" in r.stdout
        if not re.search(r"^  FAIL ", r.stdout, re.M):
            assert r.returncode == 3 and "gate: NO LATENCY COMPARED (not a pass)" in r.stdout, out
