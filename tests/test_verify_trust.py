"""verify on hostile bundles, made in the test around a tiny ONNX model: every path a manifest names
stays inside the bundle, every shipped file is listed, a malformed manifest is one line, a tarball is
size-checked before anything is extracted; plus a fuzz test over manifests."""
from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from pipeline import verify as V
from pipeline.cli import main
from pipeline.errors import UserError
from pipeline.hashing import sha256_file


@pytest.fixture(scope="module")
def bundle_src(tmp_path_factory) -> Path:
    """One target folder of a valid onnxruntime bundle: model.onnx, golden.npz, manifest.json."""
    from pipeline.backends import onnxruntime as ort
    d = tmp_path_factory.mktemp("bundle") / "x86"
    d.mkdir()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    ort.export_onnx(model, torch.zeros(1, 1, 2, 2), d / "model.onnx")
    x = np.random.default_rng(0).normal(size=(4, 1, 2, 2)).astype(np.float32)
    np.savez(d / "golden.npz", x=x, y=ort.Runner(d / "model.onnx", threads=1).run(x))
    write_manifest(d)
    return d


def write_manifest(d: Path, **over) -> dict:
    m = {"manifest_version": 1, "target": "x86", "device": "cpu", "backend": "onnxruntime",
         "deliverable": "model.onnx", "toolchain": {"python": "3.11", "edge-compress": "0"},
         "golden": {"file": "golden.npz", "max_abs": 1e-3, "min_argmax_agreement": 0.99},
         "files": {n: sha256_file(d / n) for n in ("model.onnx", "golden.npz")}}
    m.update(over)
    (d / "manifest.json").write_text(json.dumps(m))
    return m


@pytest.fixture
def bundle(bundle_src, tmp_path) -> Path:
    d = tmp_path / "b" / "x86"
    shutil.copytree(bundle_src, d)
    return d


def verify(capsys, path) -> tuple[int, str]:
    rc = main(["verify", str(path), "--runs", "5", "--threads", "1"])
    out = capsys.readouterr()
    return rc, out.out + out.err


def test_the_hand_made_bundle_verifies(bundle, capsys):
    rc, out = verify(capsys, bundle)
    assert rc == 0 and "verdict: OK" in out, out


def test_deliverable_outside_the_bundle_is_refused(bundle, capsys):
    outside = bundle.parent.parent / "model.onnx"
    shutil.copyfile(bundle / "model.onnx", outside)
    files = {"../../model.onnx": sha256_file(outside), "golden.npz": sha256_file(bundle / "golden.npz")}
    write_manifest(bundle, deliverable="../../model.onnx", files=files)
    (bundle / "model.onnx").unlink()
    rc, out = verify(capsys, bundle)
    assert rc in (1, 2) and "outside the bundle" in out and "../../model.onnx" in out, out


def test_absolute_path_in_the_manifest_is_refused(bundle, capsys):
    m = json.loads((bundle / "manifest.json").read_text())
    m["files"]["/etc/hostname"] = sha256_file("/etc/hostname")
    (bundle / "manifest.json").write_text(json.dumps(m))
    rc, out = verify(capsys, bundle)
    assert rc in (1, 2) and "/etc/hostname" in out and "outside the bundle" in out, out


def test_listed_file_that_is_a_link_out_is_refused(bundle, capsys):
    (bundle / "golden.npz").rename(bundle.parent / "golden.npz")
    os.symlink(bundle.parent / "golden.npz", bundle / "golden.npz")
    rc, out = verify(capsys, bundle)
    assert rc in (1, 2) and "golden.npz" in out and ("link" in out or "outside the bundle" in out), out


def test_a_shipped_file_that_is_not_listed_fails(bundle, capsys):
    (bundle / "extra.sh").write_text("echo hi\n")
    rc, out = verify(capsys, bundle)
    assert rc == 1 and "not in the manifest: extra.sh" in out, out


def test_deliverable_not_listed_fails(bundle, capsys):
    shutil.copyfile(bundle / "model.onnx", bundle / "other.onnx")
    m = json.loads((bundle / "manifest.json").read_text())
    write_manifest(bundle, deliverable="other.onnx", files=m["files"])
    rc, out = verify(capsys, bundle)
    assert rc in (1, 2) and "other.onnx" in out and "verdict: OK" not in out, out


@pytest.mark.parametrize("over, words", [
    ({"files": ["model.onnx", "golden.npz"]}, ["'files'"]),
    ({"files": {"model.onnx": 3}}, ["'files'"]),
    ({"golden": "golden.npz"}, ["'golden'"]),
    ({"golden": {"file": "golden.npz", "min_argmax_agreement": 0.99}}, ["max_abs"]),
    ({"golden": {"file": "golden.npz", "max_abs": "tight", "min_argmax_agreement": 0.99}}, ["max_abs"]),
    ({"deliverable": ["model.onnx"]}, ["'deliverable'"]),
    ({"backend": None}, ["'backend'"]),
])
def test_malformed_manifest_is_one_line(bundle, capsys, over, words):
    write_manifest(bundle, **over)
    rc, out = verify(capsys, bundle)
    assert rc == 2 and "Traceback" not in out, out
    for w in words:
        assert w in out, out


def test_manifest_that_is_not_an_object_is_one_line(bundle, capsys):
    (bundle / "manifest.json").write_text("[1, 2]")
    rc, out = verify(capsys, bundle)
    assert rc == 2 and "not a JSON object" in out, out


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_tarball_that_expands_too_far_is_refused_before_extracting(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(V, "MAX_FILE_BYTES", 1 << 20)
    monkeypatch.setattr(V, "MAX_BUNDLE_BYTES", 3 << 20)
    bomb = _tar(tmp_path / "bomb.tar.gz", {"x86/zeros.bin": bytes(2 << 20)})
    assert bomb.stat().st_size < 20_000
    extracted = []
    monkeypatch.setattr(tarfile.TarFile, "extractall", lambda *a, **k: extracted.append(1))
    rc, out = verify(capsys, bomb)
    assert rc == 2 and "zeros.bin" in out and "MB" in out and not extracted, out
    many = _tar(tmp_path / "many.tar.gz", {f"x86/{i}.bin": bytes(1 << 19) for i in range(8)})
    rc, out = verify(capsys, many)
    assert rc == 2 and "in all" in out and not extracted, out


def test_default_caps_are_far_above_a_real_bundle_and_far_below_a_bomb():
    assert 100 << 20 <= V.MAX_FILE_BYTES <= V.MAX_BUNDLE_BYTES <= 2 << 30


# ---------------------------------------------------------------- fuzz
JSONS = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
                     lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                     max_leaves=8)
PATHS = st.sampled_from(["model.onnx", "golden.npz", "../x", "../../../etc/hostname", "/etc/hostname", "",
                         ".", "x86", "manifest.json", "a/../../b", "sub/f", "\x00", "nul\x00l"])
FIELD = {
    "target": JSONS | st.just("x86"), "backend": JSONS | st.sampled_from(["onnxruntime", "tflite", "tensorrt"]),
    "deliverable": JSONS | PATHS,
    "files": JSONS | st.dictionaries(PATHS, st.text(max_size=64) | JSONS, max_size=4),
    "golden": JSONS | st.fixed_dictionaries({"file": PATHS | JSONS},
                                            optional={"max_abs": JSONS, "min_argmax_agreement": JSONS}),
    "toolchain": JSONS,
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(manifest=st.fixed_dictionaries({}, optional=FIELD) | JSONS)
def test_fuzz_manifests_never_traceback_nor_write_outside(bundle_src, tmp_path_factory, manifest):
    root = tmp_path_factory.mktemp("fuzz")
    d = root / "b" / "x86"
    shutil.copytree(bundle_src, d)
    (d / "manifest.json").write_text(json.dumps(manifest))
    before = sorted(p.as_posix() for p in root.rglob("*"))
    try:
        rc = main(["verify", str(root / "b"), "--runs", "5", "--threads", "1"])
    except SystemExit as e:   # argparse --help and the like
        rc = e.code
    assert rc in (0, 1, 2)
    assert sorted(p.as_posix() for p in root.rglob("*")) == before
