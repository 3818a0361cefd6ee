"""The stage contract: fingerprints, cache reuse, re-run on change, atomic rename, the run lock."""
from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest

from pipeline.config import RunConfig, load_target
from pipeline.errors import UserError
from pipeline.runner import Context, RunLock, Stage, StageFailed, read_json, run_stage


class Writer(Stage):
    def __init__(self, name, inputs=(), payload="a", fail=False):
        self.name, self.inputs, self.payload, self.fail, self.calls = name, tuple(inputs), payload, fail, 0

    def config_slice(self, ctx):
        return {"payload": self.payload}

    def run(self, ctx, out: Path) -> dict:
        self.calls += 1
        (out / "out.txt").write_text(self.payload)
        if self.fail:
            raise RuntimeError("boom")
        return {"n": len(self.payload)}


@pytest.fixture
def ctx(tmp_path):
    return Context(tmp_path, RunConfig(), [load_target("jetson")], lambda: None)


def test_record_and_cache(ctx):
    a = Writer("a")
    rec = run_stage(a, ctx)
    assert rec["status"] == "done" and set(rec["outputs"]) == {"out.txt"} and rec["metrics"] == {"n": 1}
    assert read_json(ctx.run_dir / "a" / "stage.json")["fingerprint"] == rec["fingerprint"]
    run_stage(a, ctx)
    assert a.calls == 1 and ctx.statuses["a"] == "cached"
    run_stage(a, ctx, force=True)
    assert a.calls == 2


def test_change_reruns_that_stage_and_those_after(ctx):
    a, b = Writer("a"), Writer("b", ["a"])
    run_stage(a, ctx), run_stage(b, ctx)
    a2, b2 = Writer("a", payload="changed"), Writer("b", ["a"])
    run_stage(a2, ctx), run_stage(b2, ctx)
    assert a2.calls == 1 and b2.calls == 1  # b's input hash changed
    b3 = Writer("b", ["a"])
    run_stage(b3, ctx)
    assert b3.calls == 0


def test_failure_leaves_no_stage_folder_and_keeps_the_previous(ctx):
    run_stage(Writer("a"), ctx)
    before = (ctx.run_dir / "a" / "stage.json").read_text()
    with pytest.raises(StageFailed, match="stage a failed: RuntimeError: boom"):   # one line, exit 1
        run_stage(Writer("a", payload="new", fail=True), ctx)
    assert (ctx.run_dir / "a" / "stage.json").read_text() == before
    assert not list(ctx.run_dir.glob(".a.*"))
    with pytest.raises(StageFailed):
        run_stage(Writer("fresh", fail=True), ctx)
    assert not (ctx.run_dir / "fresh").exists()


def test_leftover_tmp_from_a_killed_run_is_not_taken_as_done(ctx):
    tmp = ctx.run_dir / ".a.tmp"
    tmp.mkdir()
    (tmp / "out.txt").write_text("half")
    a = Writer("a")
    run_stage(a, ctx)
    assert a.calls == 1 and (ctx.run_dir / "a" / "out.txt").read_text() == "a"


def _hold_lock(path, ready, release):
    with RunLock(Path(path)):
        ready.set()
        release.wait(10)


def test_second_run_on_same_folder_refuses(tmp_path):
    ready, release = mp.Event(), mp.Event()
    p = mp.Process(target=_hold_lock, args=(str(tmp_path), ready, release))
    p.start()
    try:
        assert ready.wait(10)
        with pytest.raises(UserError, match="in use by pid"):
            with RunLock(tmp_path):
                pass
    finally:
        release.set()
        p.join()
    with RunLock(tmp_path):
        pass


# ---------------------------------------------------------------- a record describes the files beside it
@pytest.mark.parametrize("damage", ["replace", "delete", "append", "same-size", "edit-metrics", "no-outputs",
                                    "outputs-list", "not-json", "no-file-stats"])
def test_damaged_stage_is_rerun_never_reused(ctx, damage):
    import json
    import os
    a = Writer("a", payload="abc")
    run_stage(a, ctx)
    out, rec_path = ctx.run_dir / "a" / "out.txt", ctx.run_dir / "a" / "stage.json"
    rec = json.loads(rec_path.read_text())
    if damage == "replace":
        out.write_text("another model")
    elif damage == "delete":
        out.unlink()
    elif damage == "append":
        with open(out, "a") as f:
            f.write("x")
    elif damage == "same-size":      # same size, mtime put back: only the hash can tell
        st = out.stat()
        out.write_text("xyz")
        os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
    elif damage == "edit-metrics":
        rec["metrics"]["n"] = 99
    elif damage == "no-outputs":
        del rec["outputs"]
    elif damage == "outputs-list":
        rec["outputs"] = ["out.txt"]
    elif damage == "no-file-stats":
        rec.pop("files", None)
        rec["metrics"]["n"] = 98
    if damage in ("edit-metrics", "no-outputs", "outputs-list", "no-file-stats"):
        rec_path.write_text(json.dumps(rec))
    elif damage == "not-json":
        rec_path.write_text("{")
    rec2 = run_stage(a, ctx)
    if damage == "same-size":
        assert a.calls == 1 and ctx.statuses["a"] == "cached"   # size and mtime agree: not re-hashed (cheap)
        return
    assert a.calls == 2 and ctx.statuses["a"] == "ran", damage
    assert out.read_text() == "abc" and rec2["metrics"] == {"n": 3}


def test_changed_mtime_rehashes_and_reuses_an_identical_file(ctx):
    import os
    a = Writer("a")
    run_stage(a, ctx)
    out = ctx.run_dir / "a" / "out.txt"
    os.utime(out, (1, 1))
    run_stage(a, ctx)
    assert a.calls == 1 and ctx.statuses["a"] == "cached"
    out.write_text("b")
    os.utime(out, (2, 2))
    run_stage(a, ctx)
    assert a.calls == 2


def test_a_later_stage_reruns_after_an_earlier_damaged_one(ctx):
    a, b = Writer("a"), Writer("b", ["a"])
    run_stage(a, ctx), run_stage(b, ctx)
    (ctx.run_dir / "a" / "stage.json").write_text('{"status": "done"}')
    a2, b2 = Writer("a"), Writer("b", ["a"])
    run_stage(a2, ctx), run_stage(b2, ctx)
    assert a2.calls == 1 and b2.calls == 0   # a re-ran to the same outputs: b's inputs are unchanged
