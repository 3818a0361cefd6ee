"""Progress (pipeline/runner.py): a live bar with the stage counter, rate and ETA on a terminal; the plain
timestamped lines elsewhere and always in the log file; a resumed run says what it reuses first."""
from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

from pipeline.runner import resume_notice

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = """
import logging, sys, time
from pipeline import runner
runner.setup_logging(None)
logging.getLogger("pipeline").addHandler(logging.FileHandler(sys.argv[1]))
runner.STAGE_POSITION.update({"load": (1, 8), "prune": (2, 8), "distill": (3, 8)})
p = runner.Progress("distill", 40, every_s=0.0)
for i in range(1, 41):
    time.sleep(0.01)
    p.update(i, loss=0.5 / i)
"""


def _run(tmp_path: Path, tty: bool) -> tuple[str, str]:
    log = tmp_path / f"log-{tty}.txt"
    env = {**os.environ, "COLUMNS": "120"}
    if not tty:
        r = subprocess.run([sys.executable, "-c", SCRIPT, str(log)], cwd=ROOT, capture_output=True, text=True,
                           timeout=60, env=env)
        return r.stderr, log.read_text()
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a 120-column terminal
    p = subprocess.Popen([sys.executable, "-c", SCRIPT, str(log)], cwd=ROOT, stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:   # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    p.wait(timeout=60)
    os.close(master)
    return b"".join(chunks).decode(errors="replace"), log.read_text()


def test_terminal_gets_a_live_bar_with_stage_rate_eta(tmp_path):
    out, log = _run(tmp_path, tty=True)
    frames = out.split("\r")
    last = next(f for f in reversed(frames) if "/40" in f)
    assert last.startswith("stage 3/8 distill:") and "40/40" in last and "loss=0.0125" in last
    assert "step/s" in last or "s/step" in last      # the rate
    assert any("<00:0" in f for f in frames)         # elapsed<ETA
    assert "[distill] step 40/40" not in out                 # the bar shows it: no plain step lines on top
    assert "[distill] step 40/40" in log                     # ... but the log file keeps them


def test_non_terminal_gets_plain_timestamped_lines(tmp_path):
    out, log = _run(tmp_path, tty=False)
    assert "\r" not in out and "[distill] step 40/40 loss" in out and "ETA" in out
    assert out.splitlines()[0][:8].count(":") == 2          # HH:MM:SS first
    assert "[distill] step 40/40" in log


def test_resume_notice_names_finished_stages_and_checkpoint(tmp_path):
    class S:
        def __init__(self, name):
            self.name = name
    stages = [S("load"), S("prune"), S("distill")]
    assert resume_notice(tmp_path, stages, force=False) == []
    (tmp_path / "load").mkdir()
    (tmp_path / "load" / "stage.json").write_text("{}")
    (tmp_path / ".resume").mkdir()
    (tmp_path / ".resume" / "distill-0123.pt").write_bytes(b"x")
    lines = resume_notice(tmp_path, stages, force=False)
    assert "1 of 3 stages finished earlier (load)" in lines[0] and "distill-0123.pt" in lines[1]
    assert "--force runs every stage again" in resume_notice(tmp_path, stages, force=True)[0]
