"""Config: defaults, YAML + dotted overrides and their precedence, unknown keys, cross-field validation."""

from __future__ import annotations

import pytest

from thinktune.config import Config, validate
from thinktune.configfile import describe_fields, dump_yaml, fields_markdown, from_dict, load_config
from thinktune.errors import ConfigError


def write(tmp_path, text: str):
    p = tmp_path / "c.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def test_defaults_follow_the_recipe():
    cfg = Config()
    assert cfg.lora.r == 16 and cfg.lora.lora_alpha == 32 and cfg.lora.lora_dropout == 0.05
    assert cfg.lora.target_modules == "all-linear"
    assert cfg.data.length_policy == "drop" and cfg.data.on_bad_row == "skip"
    assert cfg.train.padding_free is True


def test_precedence_defaults_then_file_then_overrides(tmp_path):
    path = write(tmp_path, "data:\n  max_length: 1024\n  source: a.jsonl\ntrain:\n  learning_rate: 0.001\n")
    cfg = load_config(path, ["data.max_length=2048"])
    assert cfg.data.max_length == 2048  # override beats file
    assert cfg.train.learning_rate == 0.001  # file beats default
    assert cfg.lora.r == 16  # default untouched


def test_override_values_are_typed():
    cfg = load_config(
        None,
        [
            "train.learning_rate=1e-4",
            "lora.target_modules=q_proj,v_proj",
            "data.columns={question: q, answer: a}",
            "train.early_stopping_patience=3",
            "model.trust_remote_code=true",
            "data.system_prompt=You are: a doctor",
            "data.val_size=20",
            "data.max_examples=null",
        ],
    )
    assert cfg.train.learning_rate == pytest.approx(1e-4)
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.data.columns == {"question": "q", "answer": "a"}
    assert cfg.train.early_stopping_patience == 3
    assert cfg.model.trust_remote_code is True
    assert cfg.data.system_prompt == "You are: a doctor"  # text fields keep the raw text, colons included
    assert cfg.data.val_size == 20 and isinstance(cfg.data.val_size, int)  # a count, not a fraction
    assert cfg.data.max_examples is None


def test_unknown_key_suggests_nearest():
    with pytest.raises(ConfigError, match=r"unknown key 'data.max_lenght'.*Did you mean 'max_length'"):
        load_config(None, ["data.max_lenght=10"])
    with pytest.raises(ConfigError, match=r"unknown section 'trian'.*Did you mean 'train'"):
        load_config(None, ["trian.learning_rate=1"])


def test_unknown_key_in_file_names_the_file(tmp_path):
    path = write(tmp_path, "lora:\n  rank: 8\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(path) in str(e.value) and "lora.rank" in str(e.value)


def test_bad_values_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"data.max_length: expected an integer, got 'long'"):
        load_config(None, ["data.max_length=long"])
    with pytest.raises(
        ConfigError, match=r"data.length_policy: 'truncate' is not one of .*Did you mean 'truncate_reasoning'"
    ):
        load_config(None, ["data.length_policy=truncate"])
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "data: [unclosed\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["learning_rate"])


def test_cross_field_problems_are_reported_together():
    cfg = load_config(
        None,
        [
            "data.schema=columns",
            "lora.r=0",
            "train.learning_rate=-1",
            "data.val_size=1.0",
            "train.early_stopping_patience=2",
            "data.val_size=0",
        ],
    )
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    msg = str(e.value)
    for fragment in (
        "model.name_or_path is empty",
        "data.source is empty",
        "data.columns lacks",
        "lora.r=0",
        "train.learning_rate=-1",
        "early_stopping_patience needs a validation split",
    ):
        assert fragment in msg, fragment


def test_validate_passes_for_a_complete_config():
    cfg = load_config(None, ["model.name_or_path=x", "data.source=sample"])
    assert validate(cfg) is cfg


def test_bad_text_template_is_a_config_error():
    cfg = load_config(
        None, ["model.name_or_path=x", "data.source=sample", "data.text_template={answer} {question}"]
    )
    with pytest.raises(ConfigError, match="data.text_template"):
        validate(cfg)


def test_yaml_round_trip():
    cfg = load_config(None, ["data.max_length=999", "lora.target_modules=[q_proj, k_proj]"])
    import yaml

    again = from_dict(yaml.safe_load(dump_yaml(cfg)))
    assert again == cfg


def test_every_field_has_help_and_docs_are_current():
    fields = describe_fields()
    assert len(fields) > 40
    for name, _, _, help_ in fields:
        assert len(help_) > 15 and "\n" not in help_, name
    md = fields_markdown()
    assert "`data.max_length`" in md and "`lora.lora_alpha`" in md
    from conftest import ROOT

    docs = ROOT / "docs" / "config.md"
    assert docs.read_text(encoding="utf-8") == md, (
        "docs/config.md is stale: thinktune config --markdown > docs/config.md"
    )
