"""Config and targets: typed, unknown keys named, CLI overrides; property-based parsing tests."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from pipeline.config import apply_overrides, available_targets, build_run_config, load_target, load_targets
from pipeline.errors import UserError


def test_every_shipped_target_loads():
    names = available_targets()
    assert {"jetson", "jetson-agx-orin", "gpu", "android", "rpi", "x86-cpu"} <= set(names)
    for n in names:
        t = load_target(n)
        assert t.device.name and t.round_to >= 1
        if t.backend == "tensorrt":
            assert t.tensorrt is not None


def test_unknown_target_names_choices():
    with pytest.raises(UserError, match="unknown target 'nope'.*") as e:
        load_target("nope")
    assert "jetson" in e.value.fix


def test_target_file_unknown_key_and_wrong_type(tmp_path):
    p = tmp_path / "board.toml"
    p.write_text('backend = "tflite"\nroundto = 8\n[device]\nname = "x"\n')
    with pytest.raises(UserError, match="unknown key 'roundto'"):
        load_target(str(p))
    p.write_text('backend = "tflite"\nround_to = "eight"\n[device]\nname = "x"\n')
    with pytest.raises(UserError, match="'round_to'"):
        load_target(str(p))
    p.write_text('backend = "tflite"\n[device]\nname = "x"\n[budgets]\nmax_acuracy_drop = 0.1\n')
    with pytest.raises(UserError, match="budgets.max_acuracy_drop"):
        load_target(str(p))


def test_target_list_and_duplicates():
    assert [t.name for t in load_targets("jetson, android")] == ["jetson", "android"]
    with pytest.raises(UserError, match="named twice"):
        load_targets("jetson,jetson")


def test_set_overrides_and_unknown_keys():
    cfg = build_run_config(None, {}, ["distill.epochs=1", "prune.criterion=l1", "prune.ignore=[\"fc\"]"])
    assert cfg.distill.epochs == 1 and cfg.prune.criterion == "l1" and cfg.prune.ignore == ["fc"]
    with pytest.raises(UserError, match="unknown key 'distill.epoch'"):
        build_run_config(None, {}, ["distill.epoch=1"])
    with pytest.raises(UserError, match="'prune.macs_reduction'"):
        build_run_config(None, {}, ["prune.macs_reduction=lots"])
    with pytest.raises(UserError, match="has no '='"):
        build_run_config(None, {}, ["distill.epochs"])


def test_config_file(tmp_path):
    p = tmp_path / "run.toml"
    p.write_text("[distill]\nepochs = 2\n[prune]\nmacs_reduction = 0.3\n")
    cfg = build_run_config(str(p), {}, ["distill.epochs=5"])
    assert cfg.distill.epochs == 5 and cfg.prune.macs_reduction == 0.3
    p.write_text("[distill]\nepochs = \n")
    with pytest.raises(UserError, match="not valid TOML"):
        build_run_config(str(p), {}, [])


keys = st.sampled_from(["distill.epochs", "distill.lr", "prune.macs_reduction", "evaluate.runs", "seed",
                        "prune.criterion", "quantize.method", "distill.batch_size"])
values = st.one_of(st.integers(-5, 10_000), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                   st.booleans())


@settings(max_examples=200, deadline=None)
@given(key=keys, value=values)
def test_any_override_is_accepted_or_one_user_error(key, value):
    """Whatever a user types after --set, the result is a valid config or a UserError naming the key."""
    try:
        cfg = build_run_config(None, {}, [f"{key}={value}"])
    except UserError as e:
        assert key.split(".")[-1] in e.problem or "config" in e.problem
    else:
        section, _, leaf = key.rpartition(".")
        node = getattr(cfg, section) if section else cfg
        assert getattr(node, leaf) is not None


@settings(max_examples=100, deadline=None)
@given(path=st.lists(st.text(st.characters(categories=["Ll"]), min_size=1, max_size=6), min_size=1, max_size=3),
       value=st.integers())
def test_apply_overrides_builds_nested_dicts(path, value):
    d = apply_overrides({}, [f"{'.'.join(path)}={value}"])
    node = d
    for p in path[:-1]:
        node = node[p]
    assert node[path[-1]] == value


# ---------------------------------------------------------------- hostile config (issue 19)
@pytest.mark.parametrize("name", ["../../../x", "a/b", "/abs", ".hidden", "", "x" * 200, "a\\b", "a\x00b"])
def test_target_names_that_would_be_paths_are_refused(tmp_path, name):
    import json
    (tmp_path / "t.toml").write_text(f'name = {json.dumps(name)}\nbackend = "onnxruntime"\n[device]\nname = "x"\n')
    with pytest.raises(UserError, match="name"):
        load_target(str(tmp_path / "t.toml"))


def test_a_target_file_name_is_checked_too(tmp_path):
    (tmp_path / "..bad.toml").write_text('backend = "onnxruntime"\n[device]\nname = "x"\n')
    with pytest.raises(UserError, match="name"):
        load_target(str(tmp_path / "..bad.toml"))


def test_non_utf8_target_is_one_error(tmp_path):
    (tmp_path / "t.toml").write_bytes(b'backend = "onnx\xff\xfe"\n[device]\nname = "x"\n')
    with pytest.raises(UserError, match="UTF-8"):
        load_target(str(tmp_path / "t.toml"))
    with pytest.raises(UserError, match="UTF-8"):
        build_run_config(str(tmp_path / "t.toml"), {}, [])


@pytest.mark.parametrize("value", ["Infinity", "-Infinity", "NaN", "1e999"])
def test_non_finite_settings_are_refused(value):
    with pytest.raises(UserError, match="distill.epochs"):
        build_run_config(None, {}, [f"distill.epochs={value}"])
    with pytest.raises(UserError, match="distill.lr"):
        build_run_config(None, {}, [f"distill.lr={value}"])
    with pytest.raises(UserError, match="mean"):
        build_run_config(None, {"mean": [float(value.replace("Infinity", "inf"))]}, [])


def test_calibration_set_names_are_not_paths(tmp_path, fmnist):
    from pipeline.compress import calibration
    with pytest.raises(UserError, match="name"):
        calibration.build(fmnist, 4, 0, "../../escaped", out_dir=tmp_path / "c")
    assert not (tmp_path / "escaped.npy").exists() and not (tmp_path.parent / "escaped.npy").exists()


TOML_VALUES = st.one_of(st.text(max_size=20).map(lambda s: __import__("json").dumps(s)),
                        st.integers(-10**20, 10**20).map(str), st.sampled_from(["inf", "nan", "-inf", "1e999", "true",
                                                                             "[1, 2]", "{a = 1}", '"../../../x"']))
TOML_KEYS = st.sampled_from(["name", "backend", "precision", "round_to", "threads", "input_shape", "budgets",
                             "device", "tensorrt", "calibration_method", "zzz"])


@settings(max_examples=60, deadline=None)
@given(body=st.one_of(
    st.lists(st.tuples(TOML_KEYS, TOML_VALUES), max_size=6).map(
        lambda kv: "\n".join(f"{k} = {v}" for k, v in kv) + '\n[device]\nname = "d"\n'),
    st.binary(max_size=60),
    st.sampled_from(['backend = "onnxruntime"\nname = "ok"\n[device]\nname = "d"\n'])))
def test_fuzz_target_tomls_never_traceback_nor_write_outside(tmp_path_factory, body):
    from pipeline.cli import main
    root = tmp_path_factory.mktemp("toml")
    t = root / "in" / "t.toml"
    t.parent.mkdir()
    t.write_bytes(body.encode("utf-8", "surrogateescape") if isinstance(body, str) else body)
    outside_before = sorted(p.name for p in root.parent.iterdir())
    rc = main(["run", "--target", str(t), "--model", str(root / "missing.onnx"), "--out", str(root / "run")])
    assert rc in (0, 1, 2)
    assert sorted(p.name for p in root.parent.iterdir()) == outside_before
    assert {p.relative_to(root).as_posix() for p in root.rglob("*")} <= {"in", "in/t.toml", "run"}


def test_config_show_lists_every_setting_with_default_and_help(run_cli):
    """`python -m pipeline config show`: one line per setting (as --set takes it) with its default and help;
    `config schema`: the typed config's JSON schema (unknown keys refused)."""
    import json
    from pipeline.config import RunConfig, settings as all_settings
    rows = all_settings()
    assert all(r["help"] for r in rows), [r["key"] for r in rows if not r["help"]]
    r = run_cli("config", "show")
    assert r.returncode == 0, r.stderr
    lines = {line.split()[0]: line for line in r.stdout.splitlines()[1:]}
    defaults = RunConfig().model_dump()
    for row in rows:
        section, _, key = row["key"].partition(".")
        value = defaults[section][key] if key else defaults[section]
        assert row["key"] in lines and json.dumps(value) in lines[row["key"]] and row["help"][:20] in lines[row["key"]]
    assert "distill.epochs" in lines and "quantize.per_channel" in lines
    r = run_cli("config", "schema")
    schema = json.loads(r.stdout)
    assert r.returncode == 0 and schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(RunConfig.model_fields)
