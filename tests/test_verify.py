"""`python -m pipeline verify` on a small real bundle (jetson and android, from a short run on a
slice of real Fashion-MNIST): passes on the folder and the tarball; a changed, missing or extra file,
an absolute path, a missing toolchain lock and an unsafe tarball are caught; a non-bundle is a usage error."""
from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from conftest import TARGETS
from pipeline.cli import main

@pytest.fixture(scope="module")
def run_dir(small_run) -> Path:
    return small_run


def verify(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["verify", *args, "--runs", "5"])
    out = capsys.readouterr()
    return rc, out.out, out.err


def target_copy(run_dir: Path, target: str, tmp_path: Path) -> Path:
    dest = tmp_path / target
    shutil.copytree(run_dir / "handoff" / target, dest)
    return dest


def test_verify_folder_as_a_user_runs_it(run_dir, run_cli):
    r = run_cli("verify", str(run_dir / "handoff"), "--runs", "5")
    assert r.returncode == 0, r.stdout + r.stderr
    for t in TARGETS.split(","):
        assert f"  {t} (" in r.stdout and "): OK" in r.stdout
    assert "not checked here: needs TensorRT on the device" in r.stdout
    assert "verdict: OK" in r.stdout and "p50" in r.stdout and "max |diff|" in r.stdout


def test_verify_tarball_and_one_target_folder(run_dir, capsys):
    rc, out, _ = verify(capsys, str(run_dir / "handoff" / "handoff.tar.gz"))
    assert rc == 0 and "verdict: OK" in out, out
    for t in TARGETS.split(","):
        assert f"  {t} (" in out
    rc, out, _ = verify(capsys, str(run_dir / "handoff" / "android"))
    assert rc == 0 and "1 target(s)" in out and "verdict: OK" in out, out


def test_flipped_byte_fails_naming_the_file(run_dir, tmp_path, capsys):
    d = target_copy(run_dir, "android", tmp_path)
    art = d / "model.int8.tflite"
    data = bytearray(art.read_bytes())
    data[len(data) // 2] ^= 0xFF
    art.write_bytes(bytes(data))
    rc, out, _ = verify(capsys, str(d))
    assert rc == 1 and "sha256 mismatch: model.int8.tflite" in out and "verdict: FAILED" in out, out


def test_missing_file_fails_and_extra_file_is_reported(run_dir, tmp_path, capsys):
    d = target_copy(run_dir, "android", tmp_path)
    (d / "golden.npz").unlink()
    (d / "notes.txt").write_text("mine")
    rc, out, _ = verify(capsys, str(d))
    assert rc == 1 and "missing file: golden.npz" in out, out
    assert "extra file not in the manifest: notes.txt" in out


def test_absolute_path_and_missing_toolchain_lock_fail(run_dir, tmp_path, capsys):
    d = target_copy(run_dir, "android", tmp_path)
    with open(d / "README.md", "a") as f:
        f.write("\nbuilt in /home/builder/edge-compress\n")
    manifest = json.loads((d / "manifest.json").read_text())
    del manifest["toolchain"]
    (d / "manifest.json").write_text(json.dumps(manifest))
    rc, out, _ = verify(capsys, str(d))
    assert rc == 1 and "absolute path in README.md: /home/" in out and "toolchain lock missing" in out, out


def test_tarball_with_dotdot_member_is_refused(tmp_path, capsys):
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        payload = b"owned"
        info = tarfile.TarInfo("handoff/../../escaped.txt")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    rc, _, err = verify(capsys, str(evil))
    assert rc == 2 and "unsafe member path" in err and "handoff/../../escaped.txt" in err, err
    assert not (tmp_path.parent / "escaped.txt").exists()


def test_not_a_bundle_is_a_usage_error(tmp_path, capsys):
    rc, _, err = verify(capsys, str(tmp_path))
    assert rc == 2 and "not a hand-off bundle" in err, err
    rc, _, err = verify(capsys, str(tmp_path / "nowhere"))
    assert rc == 2 and "does not exist" in err, err
    (tmp_path / "bad.tar.gz").write_bytes(b"not a tarball")
    rc, _, err = verify(capsys, str(tmp_path / "bad.tar.gz"))
    assert rc == 2 and "cannot read" in err, err
