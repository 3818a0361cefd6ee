"""The READMEs' commands and settings stay true (DESIGN.md: run the commands the docs show).

Every `python -m pipeline ...` line in a README code block must parse with the CLI's own parser, its
`--set`/`--target` values must validate, and the cheap ones (`targets`) run for real. Every setting
named in README.md's settings table must exist in the typed config. The heavy commands (a full run,
bench on a device) are exercised by the e2e and device-report tests, not here.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from pipeline.cli import build_parser, main
from pipeline.config import RunConfig, build_run_config, load_targets

ROOT = Path(__file__).resolve().parent.parent
READMES = [ROOT / "README.md", ROOT / "benchmarks" / "README.md"]


def readme_commands() -> list[tuple[str, list[str]]]:
    cmds = []
    for readme in READMES:
        text = re.sub(r"\\\n\s*", " ", readme.read_text())       # join continued lines
        for line in text.splitlines():
            m = re.match(r"^ {4}.*?python3? -m pipeline (.+)$", line)
            if m:
                # "[--flag value]" marks an optional flag: check it parses too
                args = re.sub(r"(^|\s)\[(--[^\]]*)\]", r"\1\2", m.group(1))
                cmds.append((readme.relative_to(ROOT).as_posix(), shlex.split(args, comments=True)))
    return cmds


COMMANDS = readme_commands()


def test_the_readmes_show_commands():
    assert len(COMMANDS) >= 10 and {argv[0] for _, argv in COMMANDS} >= {"run", "targets", "calibrate", "gate",
                                                                         "verify", "bench", "report"}


@pytest.mark.parametrize("where, argv", COMMANDS, ids=[" ".join(a)[:60] for _, a in COMMANDS])
def test_readme_command_parses_and_its_settings_validate(where, argv, capsys):
    a = build_parser().parse_args(argv)
    if a.cmd == "run":
        build_run_config(a.config, {"model": a.model, "weights": a.weights, "data": a.data}, a.set)
        for t in a.target.split(","):
            if not t.endswith(".toml"):               # ./my-board.toml is the reader's own file
                assert load_targets(t), f"{where}: unknown target {t}"
    if a.cmd == "targets":
        assert main(argv) == 0
        assert "jetson" in capsys.readouterr().out


def test_every_setting_in_the_readme_table_exists():
    text = (ROOT / "README.md").read_text()
    table = text[text.index("Settings worth knowing"):]
    table = table[: table.index("\n\n", table.index("| setting |"))]
    keys = re.findall(r"`([a-z_]+)\.([a-z_]+)`", table)
    assert len(keys) >= 8
    for section, key in keys:
        fields = RunConfig.model_fields[section].annotation.model_fields
        assert key in fields, f"README settings table names {section}.{key}, which the config does not have"


BENCHMARKS = sorted(re.findall(r"benchmarks/(\w+\.py)", (ROOT / "benchmarks" / "README.md").read_text()))


def test_the_benchmarks_readme_lists_every_script():
    assert set(BENCHMARKS) == {p.name for p in (ROOT / "benchmarks").glob("*.py")}


@pytest.mark.parametrize("script", sorted(set(BENCHMARKS)))
def test_benchmark_script_starts(script):
    """Benchmarks are not run in CI; their --help at least proves they still import and parse."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and "usage:" in r.stdout, r.stderr[-2000:]


def test_own_model_examples_work_as_written():
    """A README run of the reader's own model file (outside this repository) carries --trust-model: without
    it the command refuses to run that code, so as written it would fail."""
    from pipeline.models import repo_code
    own = [argv for _, argv in COMMANDS if argv[0] == "run" and "--model" in argv
           and argv[argv.index("--model") + 1].split(":")[0].endswith(".py")]
    assert own, "README.md shows no own-model run"
    for argv in own:
        path = Path(argv[argv.index("--model") + 1].split(":")[0]).expanduser()
        inside = not path.is_absolute() and repo_code(ROOT / path)
        assert inside or "--trust-model" in argv, f"{' '.join(argv)}: needs --trust-model to run as written"
