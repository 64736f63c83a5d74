"""`thinktune grpo` on a tiny ChatML model: two steps with a reward that varies move the LoRA weights and not the
base; a constant reward fires the zero-spread warning; continuing an SFT adapter with beta > 0 keeps TRL's frozen
reference copy out of adapter/ and exports; overlapping rows are refused; prompts too long are dropped and listed;
the TRL names thinktune relies on are pinned."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch

from _train_helpers import (
    adapter_tensors,
    arithmetic_rows,
    build_tiny_chatml,
    single_thread,
    tiny_sections,
    write_config,
    write_rows,
)
from thinktune.config import validate
from thinktune.configfile import load_config
from thinktune.errors import DataError
from thinktune.rundir import RunDir
from thinktune.train.grpo import TRL_LOG_KEYS, grpo

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(autouse=True)
def _one_thread():
    with single_thread():
        yield


def mcq_rows(n: int = 12) -> list[dict]:
    rows = []
    for i in range(n):
        a, b = i % 5 + 1, i // 5 + 2
        s = a + b
        rows.append(
            {"question": f"What is {a} plus {b}?", "options": {"A": str(s), "B": str(s + 1), "C": str(s + 2)}, "answer_idx": "A"}
        )  # fmt: skip
    return rows


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpo")
    model = build_tiny_chatml(root / "tiny")
    return root, model, write_rows(root / "mcq.jsonl", mcq_rows())


def grpo_config(model: Path, data: Path, out: Path, *overrides: str):
    return validate(
        load_config(
            None,
            [
                f"model.name_or_path={model}",
                f"data.source={data}",
                "data.val_size=2",
                "lora.r=4",
                "lora.lora_alpha=8",
                "lora.lora_dropout=0",
                f"train.output_dir={out}",
                "train.max_steps=2",
                # The random tiny model ends a completion with its end-of-turn token about once in 300 draws: 8
                # completions of 48 tokens a step make a group with a stopped and a cut one (a reward spread)
                # near certain, whatever the seed draws
                "train.per_device_train_batch_size=8",
                "train.gradient_accumulation_steps=1",
                "train.logging_steps=1",
                "train.save_steps=100",
                "train.warmup_ratio=0",
                "grpo.num_generations=8",
                "grpo.max_prompt_length=128",
                "grpo.max_completion_length=48",
                "grpo.learning_rate=1e-2",
                *overrides,
            ],
        )
    )


def built(cfg, run_path: Path):
    """The policy and trainer exactly as grpo() builds them, kept in hand to look inside."""
    from thinktune.formatting.formatter import Formatter
    from thinktune.models.precision import resolve_precision
    from thinktune.train import rl
    from thinktune.train.grpo import build_grpo_trainer

    start = rl.starting_point(cfg.grpo.init_from, "grpo.init_from")
    tok = rl.stage_tokenizer(cfg, start)
    fmt = Formatter.from_config(tok, cfg.data)
    problems = rl.as_trained(rl.prepare_problems(cfg, fmt, max_prompt_length=128, stage="grpo"))
    run_path.mkdir(parents=True)
    run = RunDir(run_path)
    precision = resolve_precision("auto", "cpu")
    model, peft = rl.load_policy(
        cfg, start, device="cpu", precision=precision, attention="sdpa", checkpointing=False
    )
    trainer, cbs = build_grpo_trainer(
        cfg, model, peft, fmt, problems.train, run, device="cpu", precision=precision
    )
    return trainer, cbs, run


def test_two_steps_with_a_varying_reward_move_the_lora_weights_and_not_the_base(setup, tmp_path):
    root, model, data = setup
    cfg = grpo_config(model, data, tmp_path / "runs")
    trainer, cbs, run = built(cfg, tmp_path / "inproc")
    params = dict(trainer.model.named_parameters())
    lora = {n: p.detach().clone() for n, p in params.items() if "lora_" in n}
    base = {n: p.detach().clone() for n, p in params.items() if "lora_" not in n}
    assert (
        lora and all(params[n].requires_grad for n in lora) and not any(params[n].requires_grad for n in base)
    )
    trainer.train()
    moved = [n for n in lora if not torch.equal(lora[n], params[n].detach())]
    assert moved, "no LoRA weight moved in two GRPO steps"
    assert all(torch.equal(base[n], params[n].detach()) for n in base), "a base weight moved"
    records = run.metrics_records()
    assert [r["step"] for r in records] == [1, 2]
    assert any(r["reward_std"] > 0 for r in records), "the reward did not vary, the test proves nothing"
    for key in ("reward", "reward_std", "zero_spread_share", "entropy", "completion_length", "clipped_share"):
        assert all(key in r for r in records), key
    for key in (
        "step_time_s",
        "generation_tokens_per_s",
        "reward_correct",
        "reward_format_std",
        "reward_length",
    ):
        assert all(key in r for r in records), key
    lines = [json.loads(x) for x in run.completions.read_text().splitlines()]
    assert {x["step"] for x in lines} == {1, 2} and all(
        set(x["rewards"]) == {"correct", "format", "length"} for x in lines
    )


def test_grpo_writes_a_run_folder_downstream_commands_read(setup, tmp_path):
    root, model, data = setup
    run = grpo(grpo_config(model, data, tmp_path / "runs", "train.run_name=g"))
    for name in (
        "config.yaml", "env.json", "data_report.json", "data/train.jsonl", "data/validation.jsonl", "metrics.jsonl",
        "completions.jsonl", "loss_curve.png", "adapter/adapter_config.json", "adapter/adapter_model.safetensors",
        "adapter/tokenizer_config.json", "summary.json",
    ):  # fmt: skip
        assert (run.path / name).is_file(), name
    summary = run.read_summary()
    assert summary.status == "completed" and summary.stage == "grpo" and summary.steps == 2
    assert summary.first_reward is not None and set(summary.rewards) == {"correct", "format", "length"}
    # eval and compare read the held-out questions back as gradable multiple-choice questions
    from thinktune.evals.mcq import Question

    held = [Question.from_example(e, i) for i, e in enumerate(run.examples("validation"))]
    assert len(held) == 2 and all(q.gradable for q in held)
    assert "A. " in held[0].message and "The answer is X" in held[0].message
    from thinktune.report.html import write_report

    page = write_report(run.path).read_text()
    assert "GRPO" in page and "near 0" in page


def test_a_constant_reward_fires_the_zero_spread_warning(setup, tmp_path):
    root, model, data = setup
    # A random tiny model never names the right option: the correct reward alone is 0 for every completion.
    cfg = grpo_config(
        model,
        data,
        tmp_path / "runs",
        "train.max_steps=3",
        "grpo.rewards={correct: 1.0}",
        "grpo.zero_spread_steps=2",
    )
    run = grpo(cfg)
    warnings = [w for w in run.read_summary().warnings if "no learning signal" in w]
    assert warnings and "no learning signal for 2 steps" in warnings[0], run.read_summary().warnings
    assert "scores nothing" in warnings[0] and "completions.jsonl" in warnings[0]
    assert all(r["zero_spread_share"] == 1.0 for r in run.metrics_records())


@pytest.fixture(scope="module")
def sft_run(setup):
    from thinktune.train.recipe import train

    root, model, _ = setup
    data = write_rows(root / "arith.jsonl", arithmetic_rows(12))
    sections = tiny_sections(model, data, root / "sft-runs", max_steps=2, eval_steps=100, save_steps=100)
    sections["lora"] |= {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0}
    return train(load_config(write_config(root / "sft.yaml", sections)))


def test_beta_with_an_sft_adapter_keeps_the_frozen_reference_out_of_the_adapter_and_exports(
    setup, sft_run, tmp_path
):
    from thinktune.export import merge
    from thinktune.train.checkpoints import save_adapter
    from thinktune.train.rl import from_run

    root, model, data = setup
    cfg = grpo_config(model, data, tmp_path / "runs", "grpo.beta=0.1")
    cfg = from_run(sft_run, cfg)
    cfg.grpo.init_from = str(sft_run.path)
    trainer, cbs, run = built(validate(cfg), tmp_path / "beta")
    peft_model = trainer.model
    assert set(peft_model.peft_config) == {"default", "ref"}  # TRL's frozen copy of the starting adapter
    sft = adapter_tensors(sft_run.adapter)
    params = dict(peft_model.named_parameters())
    ref = {n: p for n, p in params.items() if ".ref." in n}
    assert ref and not any(p.requires_grad for p in ref.values())
    before = {n: p.detach().clone() for n, p in ref.items()}
    trainer.train()
    assert all(torch.equal(before[n], p.detach()) for n, p in ref.items()), "the reference moved"
    assert any(r.get("kl") is not None for r in run.metrics_records())
    save_adapter(trainer, run, main=True)
    saved = adapter_tensors(run.adapter)
    assert not [p for p in run.adapter.iterdir() if p.is_dir()], "an extra adapter folder was saved"
    assert saved.keys() == sft.keys() and not any(".ref." in k for k in saved)
    assert any(not torch.equal(saved[k], sft[k]) for k in saved), "the policy did not move"
    # The export merges the policy: the merged weights are base + the saved (trained) delta, not the reference's.
    (run.path / "config.yaml").write_text((sft_run.path / "config.yaml").read_text())
    out = merge.export(merge.plan_export(run.path, "merged", tmp_path / "merged", dtype="float32"))
    assert not list(out.glob("**/adapter_config.json"))
    from safetensors.torch import load_file

    merged = load_file(str(next(out.glob("*.safetensors"))))
    base = load_file(str(next(Path(model).glob("*.safetensors"))))
    name = next(k for k in saved if "q_proj.lora_A" in k)
    module = name.split("base_model.model.", 1)[1].split(".lora_A")[0]
    scale = 8 / 4
    delta_policy = (saved[name.replace("lora_A", "lora_B")] @ saved[name]) * scale
    delta_ref = (sft[name.replace("lora_A", "lora_B")] @ sft[name]) * scale
    got = merged[f"{module}.weight"] - base[f"{module}.weight"]
    assert torch.allclose(got, delta_policy, atol=1e-5)
    assert not torch.allclose(got, delta_ref, atol=1e-6)


def test_rows_overlapping_an_evaluation_set_are_refused_with_their_row_numbers(setup, tmp_path):
    root, model, data = setup
    bench = tmp_path / "bench.jsonl"
    copied = (
        mcq_rows()[4]["question"].upper().replace(" ", "  ")
        + " (copied into the test set, with padding text)"
    )
    long_q = "A long stem that the test set shares with the training file, word for word, at least sixty-four letters"
    bench.write_text(
        json.dumps({"question": copied, "options": {"A": "x", "B": "y"}, "answer_idx": "A"}) + "\n"
        + json.dumps({"question": long_q.lower() + "!!", "options": {"A": "x", "B": "y"}, "answer_idx": "A"}) + "\n"
    )  # fmt: skip
    rows = mcq_rows() + [{"question": long_q, "options": {"A": "1", "B": "2"}, "answer_idx": "B"}]
    train_data = write_rows(tmp_path / "with-copy.jsonl", rows)
    cfg = grpo_config(model, train_data, tmp_path / "runs", f"eval.benchmarks=[{bench}]")
    with pytest.raises(DataError, match=r"1 rows of .* share 64 consecutive characters.*rows 13\b"):
        grpo(cfg)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_overlap_index_normalizes_case_spacing_and_punctuation():
    from thinktune.data.overlap import OverlapIndex, overlapping

    a = "Patient: a 45-year-old man with crushing chest pain radiating to the left arm and jaw, sweating."
    index = OverlapIndex([a])
    assert index.overlaps(
        "PATIENT a 45 year old man, with crushing chest-pain radiating to the LEFT arm and JAW!"
    )
    assert not index.overlaps(
        "A 45-year-old woman with a rash on both cheeks after sun exposure and joint pain."
    )
    assert overlapping(["short", a], ["short"]) == [
        0
    ]  # a test text under 64 characters counts when copied whole


def test_prompts_too_long_are_dropped_and_listed(setup, tmp_path):
    root, model, data = setup
    rows = mcq_rows() + [
        {"question": "Why? " + "really " * 120, "options": {"A": "1", "B": "2"}, "answer_idx": "A"}
    ]
    run = grpo(
        grpo_config(model, write_rows(tmp_path / "long.jsonl", rows), tmp_path / "runs", "train.max_steps=1")
    )
    report = json.loads(run.data_report.read_text())
    assert report["prompts"]["dropped"] and report["prompts"]["dropped"][0]["row"] == 13
    assert report["prompts"]["dropped"][0]["prompt_tokens"] > 128
    assert run.read_summary().prompts_dropped == 1
    assert all(json.loads(line)["meta"]["row"] != 13 for line in run.train_data.read_text().splitlines())


def test_batches_must_hold_whole_groups(setup, tmp_path):
    from thinktune.errors import TrainError

    root, model, data = setup
    cfg = grpo_config(model, data, tmp_path / "runs", "train.per_device_train_batch_size=3")
    with pytest.raises(TrainError, match="not a multiple of grpo.num_generations=8"):
        grpo(cfg)


def test_vllm_is_refused_off_cuda(setup, tmp_path):
    from thinktune.errors import GenerationError

    root, model, data = setup
    with pytest.raises(GenerationError, match="vLLM colocated on the training GPU"):
        grpo(grpo_config(model, data, tmp_path / "runs", "generation.backend=vllm"))


def test_the_trl_names_thinktune_relies_on():
    """TRL internals used by the GRPO stage, in one place: rollout_func's contract, the config fields set, the
    metric names copied into metrics.jsonl and the name of the frozen reference adapter."""
    from trl import GRPOConfig, GRPOTrainer
    from trl.trainer import grpo_trainer

    assert "rollout_func" in inspect.signature(GRPOTrainer.__init__).parameters
    source = inspect.getsource(grpo_trainer)
    assert '{"prompt_ids", "completion_ids", "logprobs"}' in source
    assert 'model.add_adapter("ref", default_config)' in source
    for key in TRL_LOG_KEYS:
        if key.startswith(("completions/think", "completions/stopped", "completions/option", "generation_")):
            continue  # thinktune's own
        assert f'"{key}"' in source, key
    assert 'f"rewards/{reward_func_name}/mean"' in source and 'f"rewards/{reward_func_name}/std"' in source
    fields = {f for f in GRPOConfig.__dataclass_fields__}
    for name in ("num_generations", "max_completion_length", "beta", "loss_type", "epsilon_high", "scale_rewards",
                 "mask_truncated_completions", "reward_weights", "use_vllm", "vllm_mode", "shuffle_dataset"):  # fmt: skip
        assert name in fields, name
