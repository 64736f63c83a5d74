"""Safe model loading: a model's own Python code (auto_map) never runs unless model.trust_remote_code allows it,
and pickle weights (.bin) are never unpickled unless model.allow_pickle allows it."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from _train_helpers import build_tiny_chatml, write_config
from thinktune import cli
from thinktune.config import ModelConfig
from thinktune.configfile import from_dict
from thinktune.errors import ModelLoadError
from thinktune.models.loading import load_adapter, load_model, load_tokenizer
from thinktune.train.preflight import preflight


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_chatml(tmp_path_factory.mktemp("loading") / "tiny")


class _Plant:
    """Unpickling this creates a file: the proof that a pickle ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


# ------------------------------------------------------------------------------------------ remote code


@pytest.fixture
def remote_code_model(tmp_path) -> tuple[Path, Path]:
    folder = tmp_path / "custom-model"
    folder.mkdir()
    marker = tmp_path / "CODE_RAN"
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "evilcustom",
                "architectures": ["EvilForCausalLM"],
                "auto_map": {
                    "AutoConfig": "configuration_evil.EvilConfig",
                    "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM",
                },
            }
        )
    )
    (folder / "configuration_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    (folder / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    return folder, marker


def test_model_with_custom_code_is_refused_by_name_unless_trusted(remote_code_model, tmp_path):
    folder, marker = remote_code_model
    cfg = from_dict({"model": {"name_or_path": str(folder)}, "data": {"source": "sample"}})
    assert cfg.model.trust_remote_code is False  # the default
    for attempt in (
        lambda: preflight(cfg),
        lambda: load_model(cfg.model, device="cpu"),
        lambda: load_tokenizer(cfg.model),
    ):
        with pytest.raises(
            ModelLoadError, match=r"ships its own Python code.*model.trust_remote_code=true"
        ) as err:
            attempt()
        assert "configuration_evil.py" in str(err.value)
    assert not marker.exists(), "the model's code ran without trust_remote_code"


def test_custom_code_refusal_through_the_cli(remote_code_model, tmp_path, capsys):
    folder, marker = remote_code_model
    sections = {
        "model": {"name_or_path": str(folder)},
        "data": {"source": "sample"},
        "train": {"output_dir": str(tmp_path / "runs")},
    }
    rc = cli.main(["train", str(write_config(tmp_path / "c.yaml", sections))])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and "model.trust_remote_code=true" in err
    assert not marker.exists() and not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------------------ pickles


def test_pickle_weights_are_never_unpickled_unless_allowed(tiny, tmp_path):
    import shutil

    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    shutil.copytree(tiny, folder)
    weights = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "PICKLE_RAN"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Plant(marker)))
    with pytest.raises(ModelLoadError, match=r"pickle files \(pytorch_model.bin\).*model.allow_pickle=true"):
        load_model(ModelConfig(name_or_path=str(folder)), device="cpu")
    assert not marker.exists()

    # Explicitly allowed (a real state dict this time): it loads.
    torch.save(weights, folder / "pytorch_model.bin")
    model = load_model(ModelConfig(name_or_path=str(folder), allow_pickle=True), device="cpu")
    name, tensor = next(iter(weights.items()))
    assert torch.equal(model.state_dict()[name], tensor)


def test_pickled_adapter_is_refused(tiny, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    marker = tmp_path / "PICKLE_RAN"
    (adapter / "adapter_model.bin").write_bytes(pickle.dumps(_Plant(marker)))
    with pytest.raises(ModelLoadError, match="model.allow_pickle"):
        load_adapter(object(), adapter)
    assert not marker.exists()


def test_allow_pickle_is_a_documented_setting():
    docs = (Path(__file__).resolve().parents[1] / "docs" / "config.md").read_text()
    assert "allow_pickle" in docs and ModelConfig().allow_pickle is False
