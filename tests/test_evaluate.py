"""Held-out loss by span: batched, left-padded scoring equals scoring each example alone."""

from __future__ import annotations

import math

import pytest

from thinktune.data.load import load_examples
from thinktune.evals.evaluate import heldout_loss
from thinktune.formatting.formatter import Formatter


@pytest.fixture(scope="module")
def setup(tiny_qwen3_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_qwen3_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3_dir, dtype=torch.float32).eval()
    examples = load_examples("sample").examples[:5]
    return model, Formatter(tok), examples


def _alone(model, fmt, examples):
    """Reference: each example unpadded, cross-entropy summed over the reasoning and the answer span."""
    import torch
    import torch.nn.functional as F

    sums = {"reasoning": [0.0, 0], "answer": [0.0, 0]}
    for ex in examples:
        enc = fmt.encode(ex)
        ids = torch.tensor([enc.input_ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0].float()
        nll = F.cross_entropy(logits[:-1], ids[0, 1:], reduction="none")  # nll[t - 1] scores token t
        for span, (a, b) in {
            "reasoning": (enc.prompt_len, enc.answer_start),
            "answer": (enc.answer_start, len(ids[0])),
        }.items():
            sums[span][0] += float(nll[a - 1 : b - 1].sum())
            sums[span][1] += b - a
    return sums


def test_heldout_loss_by_span_matches_scoring_each_example_alone(setup):
    model, fmt, examples = setup
    got = heldout_loss(model, fmt, examples, adapter=False, batch_size=3)
    ref = _alone(model, fmt, examples)
    assert got["examples"] == 5
    for span in ("reasoning", "answer"):
        total, n = ref[span]
        assert got[span]["tokens"] == n
        assert got[span]["loss"] == pytest.approx(total / n, rel=1e-4)
        assert got[span]["perplexity"] == pytest.approx(math.exp(total / n), rel=1e-3)
    both = ref["reasoning"][1] + ref["answer"][1]
    assert got["completion"]["tokens"] == both
    assert got["completion"]["loss"] == pytest.approx(
        (ref["reasoning"][0] + ref["answer"][0]) / both, rel=1e-4
    )
    # the answer span ends with the end-of-turn token: it is scored
    enc = fmt.encode(examples[0])
    assert enc.input_ids[-1] == fmt.eot_id


def test_answer_only_training_has_no_reasoning_span(setup):
    model, fmt, examples = setup
    drop = Formatter(fmt.tokenizer, reasoning="drop")
    got = heldout_loss(model, drop, examples[:2], adapter=False)
    assert got["reasoning"] is None  # no reasoning tokens are supervised, so there is nothing to score
    assert got["answer"]["tokens"] == sum(drop.encode(e).lengths["answer"] for e in examples[:2])
