"""Model files that could run code: a .pt2 whose archive holds pickles runs nothing without
--trust-model; only the repository's own code (not runs/) counts as trusted; a factory that exits or
an archive torch cannot read ends in one line."""
from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from pipeline import models
from pipeline.config import ROOT
from pipeline.errors import UserError


class _Evil:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


class _Const(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c = torch.ones(3)

    def forward(self, x):
        return x + self.c


def _pt2(path: Path) -> Path:
    torch.export.save(torch.export.export(_Const(), (torch.zeros(3),)), str(path))
    return path


def _rewrite(src: Path, dst: Path, edit) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = edit(info.filename, zin.read(info.filename))
            zout.writestr(info.filename, data)
    return dst


def evil_pt2(tmp_path: Path, where: str) -> tuple[Path, Path]:
    """A valid archive, edited so that loading it unpickles an object that writes `marker`."""
    marker = tmp_path / f"pwned-{where}"
    payload = pickle.dumps(_Evil(marker))
    good = _pt2(tmp_path / "good.pt2")

    def edit(name: str, data: bytes) -> bytes:
        if where == "constant" and name.endswith("model_constants_config.json"):
            cfg = json.loads(data)
            cfg["config"]["c"]["use_pickle"] = True
            return json.dumps(cfg).encode()
        if where == "constant" and name.endswith("constants/tensor_0"):
            return payload
        if where == "sample_inputs" and "sample_inputs/" in name:
            return payload
        return data
    return _rewrite(good, tmp_path / f"evil-{where}.pt2", edit), marker


@pytest.mark.parametrize("where", ["constant", "sample_inputs"])
def test_pt2_with_pickles_runs_nothing_without_trust(tmp_path, where):
    path, marker = evil_pt2(tmp_path, where)
    spec = models.parse_spec(str(path))
    with pytest.raises(UserError, match="unpickle") as e:
        models.build(spec)
    assert "--trust-model" in e.value.line()
    assert not marker.exists(), "loading the archive executed code"


def test_plain_pt2_loads_without_trust(tmp_path):
    m = models.build(models.parse_spec(str(_pt2(tmp_path / "ok.pt2"))))
    assert torch.equal(m(torch.zeros(3)), torch.ones(3))


def test_pickled_pt2_loads_with_trust(tmp_path):
    path, marker = evil_pt2(tmp_path, "sample_inputs")
    spec = models.parse_spec(str(path), trust=True)
    try:
        models.build(spec)
    except UserError:
        pass
    assert marker.exists()   # the user said they trust it: torch's own loader ran


def test_bad_pt2_is_one_line_without_torch_logs(tmp_path, run_cli):
    bad = tmp_path / "bad.pt2"
    _rewrite(_pt2(tmp_path / "g.pt2"), bad, lambda n, d: b"{" if n.endswith("models/model.json") else d)
    r = run_cli("run", "--model", str(bad), "--target", "x86-cpu", "--until", "load", "--out", str(tmp_path / "r"))
    err = [ln for ln in r.stderr.splitlines() if "error" in ln.lower() or "Traceback" in ln or ln.startswith(" ")]
    assert r.returncode == 2 and len(err) == 1 and "bad.pt2" in err[0], r.stderr


def test_code_under_runs_is_not_trusted():
    d = ROOT / "runs" / "_trust_test"
    d.mkdir(parents=True, exist_ok=True)
    try:
        (d / "m.py").write_text("def build():\n    raise SystemExit('ran')\n")
        with pytest.raises(UserError, match="runs/") as e:
            models.parse_spec(f"{d / 'm.py'}:build")
        assert "--trust-model" in e.value.line()
        models.parse_spec("pipeline/models/resnet.py:small_resnet")   # the repo's own code still is
    finally:
        import shutil
        shutil.rmtree(d)


def test_factory_that_exits_is_one_line(tmp_path):
    (tmp_path / "bye.py").write_text("import sys\ndef build():\n    sys.exit(3)\n")
    (tmp_path / "bye_import.py").write_text("import sys\nsys.exit(4)\ndef build():\n    pass\n")
    with pytest.raises(UserError, match="exit"):
        models.build(models.parse_spec(f"{tmp_path / 'bye.py'}:build", trust=True))
    with pytest.raises(UserError, match="exit"):
        models.build(models.parse_spec(f"{tmp_path / 'bye_import.py'}:build", trust=True))
