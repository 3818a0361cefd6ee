"""Model specs and stage-to-stage model files: pruned models rebuild without pickled code."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline import models
from pipeline.errors import UserError
from pipeline.models.resnet import small_resnet


def test_pruned_model_roundtrips_through_weights_only_file(tmp_path):
    import torch_pruning as tp
    m = small_resnet().eval()
    x = torch.randn(2, 1, 28, 28)
    pruner = tp.pruner.MetaPruner(m, x[:1], importance=tp.importance.MagnitudeImportance(p=2),
                                  pruning_ratio=0.5, ignored_layers=[m.fc], round_to=8)
    pruner.step()
    models.save_model(m, tmp_path / "model.pt")
    torch.load(tmp_path / "model.pt", weights_only=True)  # no pickled classes inside
    again = models.rebuild(small_resnet(), torch.load(tmp_path / "model.pt", weights_only=True))
    assert again.layers[1].conv1.out_channels == m.layers[1].conv1.out_channels < 64
    with torch.no_grad():
        assert torch.allclose(again(x), m(x), atol=1e-6)


def test_factory_outside_repo_needs_trust(tmp_path):
    f = tmp_path / "net.py"
    f.write_text("import torch\ndef build():\n    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))\n")
    with pytest.raises(UserError, match="outside this repository") as e:
        models.parse_spec(f"{f}:build")
    assert "--trust-model" in e.value.fix
    spec = models.parse_spec(f"{f}:build", trust=True)
    assert isinstance(models.build(spec), torch.nn.Module)


@pytest.mark.parametrize("body, match", [
    ("def build():\n    raise ValueError('no')\n", "raised ValueError"),
    ("def build():\n    return 3\n", "not an nn.Module"),
    ("import nonexistent_pkg_xyz\n", "importing .* failed"),
    ("x = 1\n", "has no function 'build'"),
])
def test_bad_factories(tmp_path, body, match):
    f = tmp_path / "net.py"
    f.write_text(body)
    with pytest.raises(UserError, match=match):
        models.build(models.parse_spec(f"{f}:build", trust=True))


def test_bad_checkpoints(tmp_path):
    good = tmp_path / "good.pt"
    torch.save(small_resnet().state_dict(), good)
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(good.read_bytes()[:1000])
    pickled = tmp_path / "pickled.pt"
    torch.save(small_resnet(), pickled)
    other = tmp_path / "other.pt"
    torch.save(torch.nn.Linear(3, 4).state_dict(), other)
    factory = "pipeline/models/resnet.py:small_resnet"
    models.build(models.parse_spec(factory, str(good)))
    for path, match in [(truncated, "cannot load checkpoint"), (pickled, "cannot load checkpoint"),
                        (other, "does not fit small_resnet")]:
        with pytest.raises(UserError, match=match):
            models.build(models.parse_spec(factory, str(path)))
    with pytest.raises(UserError, match="weights file not found"):
        models.parse_spec(factory, str(tmp_path / "missing.pt"))


def test_nan_weights_refused():
    m = small_resnet()
    with torch.no_grad():
        m.fc.weight[0, 0] = float("nan")
    with pytest.raises(UserError, match="fc.weight.*NaN"):
        models.check_finite(m, "m")


def test_spec_forms(tmp_path):
    assert models.parse_spec("default").trainable
    with pytest.raises(UserError, match="cannot tell"):
        models.parse_spec("resnet")
    with pytest.raises(UserError, match="not found"):
        models.parse_spec(str(tmp_path / "m.onnx"))
    with pytest.raises(UserError, match="bad model spec"):
        models.parse_spec("net.txt:build")
