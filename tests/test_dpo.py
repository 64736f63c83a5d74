"""`thinktune dpo`: pair building on fixed generations (right answers chosen, wrong ones rejected, cut answers
never chosen, one use per answer), and a 2-step DPO run from a tiny SFT run on fixed sampled answers (half
right): the pairs and their count are recorded, the policy moves, the frozen reference copy stays out of
adapter/."""

from __future__ import annotations

import json

import pytest

from _train_helpers import adapter_tensors, build_tiny_chatml, single_thread, write_config, write_rows
from thinktune.configfile import load_config
from thinktune.evals.mcq import Question
from thinktune.infer.generate import Generation
from thinktune.train.dpo import build_pairs, judge

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

Q = Question("2 + 2?", {"A": "4", "B": "5", "C": "6"}, "A", row=7, reference="4")


REASONING = "Two and two make four, so the sum is four, which is option A among the three choices given here."


def gen(answer: str, *, stopped: bool = True, closed: bool = True) -> Generation:
    text = f"<think>\n{REASONING}\n</think>\n\n{answer}"
    return Generation("p", text, REASONING, answer, closed, True, stopped, not stopped, 32)


def test_pairs_take_right_answers_as_chosen_and_wrong_ones_as_rejected():
    judged = [judge(Q, g, expect_think=True) for g in (
        gen("The answer is B."), gen("The answer is A."), gen("four, I think"), gen("The answer is A.", stopped=False),
        gen("The answer is A."), gen("The answer is C."),
    )]  # fmt: skip
    pairs = build_pairs(Q, judged, "PROMPT", "<|im_end|>", limit=5)
    assert len(pairs) == 2  # two usable right answers; a cut right answer is never chosen
    assert all(p.chosen.endswith("The answer is A.<|im_end|>") for p in pairs)
    # wrong answers that kept the format come first, so a pair differs in being right, not in shape
    assert [p.rejected.split("\n\n")[-1] for p in pairs] == [
        "The answer is B.<|im_end|>",
        "The answer is C.<|im_end|>",
    ]
    assert all(p.row == 7 and p.reference_letter == "A" and p.prompt == "PROMPT" for p in pairs)
    assert len(build_pairs(Q, judged, "PROMPT", "<|im_end|>", limit=1)) == 1


def test_the_format_order_reads_the_rewards_minimum_reasoning():
    """A 19-word think block is no reasoning under the default 20 words (format 0: the rejected answer that kept
    the format goes first); with grpo.min_reasoning_words=5 it counts (format 1)."""
    short = Generation("p", "x", "w " * 19, "The answer is B.", True, True, True, False, 32)
    assert judge(Q, short, expect_think=True).format == 0.0
    assert judge(Q, short, expect_think=True, min_words=5).format == 1.0


def test_no_pair_when_every_answer_is_right_or_every_answer_is_wrong():
    right = [judge(Q, gen("The answer is A."), expect_think=True)] * 3
    wrong = [judge(Q, gen("The answer is B."), expect_think=True)] * 3
    assert (
        build_pairs(Q, right, "P", "</s>", limit=2) == []
        and build_pairs(Q, wrong, "P", "</s>", limit=2) == []
    )


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    from _train_helpers import arithmetic_rows, tiny_sections
    from thinktune.train.recipe import train

    root = tmp_path_factory.mktemp("dpo")
    model = build_tiny_chatml(root / "tiny")
    mcq = [
        {"question": f"What is {i % 5 + 1} plus {i // 5 + 2}?", "options": {"A": "right", "B": "wrong"}, "answer_idx": "A"}
        for i in range(12)
    ]  # fmt: skip
    sections = tiny_sections(
        model, write_rows(root / "arith.jsonl", arithmetic_rows(12)), root / "runs", max_steps=2
    )
    sections["lora"] |= {"lora_dropout": 0.0}
    with single_thread():
        run = train(load_config(write_config(root / "sft.yaml", sections)))
    return root, run, write_rows(root / "mcq.jsonl", mcq)


def fixed_generations(model, tokenizer, prompts, **kw):
    """Sampled answers stand-in: for each prompt, answers alternating right (A) and wrong (B), the third one cut."""
    out = []
    for i, p in enumerate(prompts):
        letter = "AB"[i % 2]
        stopped = i % 4 != 2
        text = f"<think>\nthinking {i}\n</think>\n\nThe answer is {letter}."
        out.append(
            Generation(
                p, text, f"thinking {i}", f"The answer is {letter}.", True, True, stopped, not stopped, 12
            )
        )
    return out


def test_a_two_step_dpo_run_from_an_sft_run(sft_run, monkeypatch):
    from thinktune.config import validate
    from thinktune.configfile import apply_overrides
    from thinktune.train import dpo as dpo_module
    from thinktune.train.rl import from_run

    root, sft, mcq = sft_run
    calls = []
    monkeypatch.setattr(dpo_module, "generate", lambda *a, **k: calls.append(k) or fixed_generations(*a, **k))
    cfg = from_run(sft, load_config(None))
    cfg.dpo.init_from = str(sft.path)
    apply_overrides(cfg, [
        f"data.source={mcq}", "data.val_size=2", f"train.output_dir={root / 'dpo-runs'}", "train.run_name=d",
        "train.max_steps=2", "train.per_device_train_batch_size=2", "train.gradient_accumulation_steps=1",
        "train.logging_steps=1", "train.save_steps=100", "train.warmup_ratio=0", "dpo.samples=4",
        "dpo.max_prompt_length=128", "dpo.max_completion_length=24", "dpo.learning_rate=1e-2",
    ])  # fmt: skip
    with single_thread():
        run = dpo_module.dpo(validate(cfg))
    assert calls[0]["temperature"] == 1.0 and calls[0]["seed"] == cfg.train.seed  # seeded sampling
    summary = run.read_summary()
    assert summary.status == "completed" and summary.stage == "dpo" and summary.steps == 2
    report = json.loads(run.data_report.read_text())["pairs"]
    assert report["questions"] == 10 and report["answers"] == 40 and report["questions_with_pair"] == 10
    assert summary.pairs == report["pairs"] == 10 and summary.questions_with_pair == 10
    pairs = [json.loads(x) for x in run.pairs.read_text().splitlines()]
    assert all(p["chosen"].endswith("The answer is A.<|im_end|>") for p in pairs)
    assert all(p["rejected"].endswith("The answer is B.<|im_end|>") for p in pairs)
    records = run.metrics_records()
    assert [r["step"] for r in records] == [1, 2] and all("dpo_margin" in r for r in records)
    saved, start = adapter_tensors(run.adapter), adapter_tensors(sft.adapter)
    assert saved.keys() == start.keys() and not [p for p in run.adapter.iterdir() if p.is_dir()]
    assert any(not (saved[k] == start[k]).all() for k in saved), "the policy did not move"
    assert (run.adapter / "tokenizer_config.json").is_file()
