"""The one formatter: parity with each model's own chat template and proofs of the loss mask.

Three real templates (DeepSeek-R1-Distill in both revisions, Qwen3, SmolLM2's ChatML) x with/without reasoning x
with/without a system prompt, plus the plain-text family.
"""

from __future__ import annotations

import json

import pytest

from conftest import R1_TEMPLATE_FIXTURE, needs_shared
from thinktune.data.schemas import Example
from thinktune.errors import TemplateError
from thinktune.formatting.formatter import INLINE, REASONING_FIELD, STRIPS_REASONING, TEXT, Formatter

EXAMPLES = {
    "en": Example(
        "A 45-year-old man has crushing chest pain for 30 minutes. What is the first test?",
        "Okay, so chest pain like this suggests acute coronary syndrome.\nLet me think... an ECG within 10 minutes.",
        "Obtain a 12-lead ECG immediately.",
    ),
    "zh": Example(
        "患者发热三天，伴咳嗽和胸痛。最可能的诊断是什么？",
        "好的，发热伴咳嗽和胸痛，嗯，考虑肺炎。",
        "最可能是社区获得性肺炎。",
    ),
}
SYSTEMS = [None, "You are a careful physician. 请用中文或英文回答。"]


@pytest.fixture(scope="module", params=["r1", "r1_think", "qwen3", "smollm2"])
def family_tokenizer(request):
    name = request.param
    tok = request.getfixturevalue(
        {
            "r1": "r1_tokenizer",
            "r1_think": "r1_think_tokenizer",
            "qwen3": "qwen3_tokenizer",
            "smollm2": "smollm2_tokenizer",
        }[name]
    )
    return name, tok


EXPECTED_FAMILY = {
    "r1": STRIPS_REASONING,
    "r1_think": STRIPS_REASONING,
    "qwen3": REASONING_FIELD,
    "smollm2": INLINE,
}


def _messages(ex: Example, system: str | None):
    return ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": ex.question}
    ]


@pytest.mark.parametrize("reasoning", ["train", "drop"])
@pytest.mark.parametrize("system", SYSTEMS, ids=["no-system", "system"])
@pytest.mark.parametrize("lang", ["en", "zh"])
def test_prompt_parity_and_mask(family_tokenizer, reasoning, system, lang):
    name, tok = family_tokenizer
    ex = Example(EXAMPLES[lang].question, EXAMPLES[lang].reasoning, EXAMPLES[lang].answer, system)
    fmt = Formatter(tok, reasoning=reasoning)
    assert fmt.family == EXPECTED_FAMILY[name]
    kwargs = {"enable_thinking": reasoning == "train"} if name == "qwen3" else {}
    r = fmt.render(ex)

    # 1. The prompt is exactly the model's own generation prompt.
    expected_prompt = tok.apply_chat_template(
        _messages(ex, system), tokenize=False, add_generation_prompt=True, **kwargs
    )
    assert r.prompt == expected_prompt
    assert fmt.prompt(ex.question, system) == expected_prompt

    # 2. The completion carries the reasoning (or not), the answer, and ends with the end-of-turn token.
    assert r.completion.endswith(ex.answer + fmt.eot)
    if reasoning == "train":
        assert ex.reasoning in r.completion and "</think>" in r.completion
    else:
        assert ex.reasoning not in r.completion

    # 3. Prompt + completion is what the template itself renders for the conversation.
    if fmt.family == STRIPS_REASONING:
        answer_only = tok.apply_chat_template(
            _messages(ex, system) + [{"role": "assistant", "content": ex.answer}], tokenize=False
        )
        if reasoning == "train":
            # The template itself would have deleted the chain of thought: the pitfall this family exists for.
            with_cot = tok.apply_chat_template(
                _messages(ex, system)
                + [{"role": "assistant", "content": f"<think>\n{ex.reasoning}\n</think>\n\n{ex.answer}"}],
                tokenize=False,
            )
            assert ex.reasoning not in with_cot
        # Apart from the think block, the text is the template's own.
        text = r.prompt + r.completion
        start, end = text.find("<think>"), text.find("</think>\n\n")
        if start >= 0:
            text = text[:start] + text[end + len("</think>\n\n") :]
        assert text == answer_only.rstrip("\n") or text == answer_only
    else:
        assistant = fmt.assistant_message(ex.reasoning if reasoning == "train" else "", ex.answer)
        full = tok.apply_chat_template(_messages(ex, system) + [assistant], tokenize=False, **kwargs)
        assert full.startswith(r.prompt + r.completion)
        assert full[len(r.prompt + r.completion) :].strip() == ""

    # 4. Mask proof: supervised tokens are exactly the completion; the prompt tokens are those of inference.
    enc = fmt.encode(ex)
    prompt_ids = tok(r.prompt, add_special_tokens=False)["input_ids"]
    assert enc.input_ids[: enc.prompt_len] == prompt_ids
    assert enc.completion_mask == [0] * len(prompt_ids) + [1] * (len(enc.input_ids) - len(prompt_ids))
    supervised = [t for t, m in zip(enc.input_ids, enc.completion_mask, strict=True) if m]
    assert tok.decode(supervised) == r.completion
    assert enc.labels()[-1] == fmt.eot_id and enc.input_ids[-1] == fmt.eot_id
    assert enc.labels()[: enc.prompt_len] == [-100] * enc.prompt_len
    # The answer span decodes to the answer (plus the end-of-turn token).
    assert tok.decode(enc.input_ids[enc.answer_start :]).strip().startswith(ex.answer)
    L = enc.lengths
    assert L["question"] + L["reasoning"] + L["answer"] == L["total"] == len(enc.input_ids)
    if reasoning == "drop" and not fmt.prompt_opens_think:
        assert L["reasoning"] == 0

    # 5. The startup checks pass.
    fmt.check([ex])


def test_r1_chain_of_thought_survives(r1_tokenizer, r1_think_tokenizer):
    """Regression: rendering through R1's apply_chat_template silently drops the CoT; thinktune must not."""
    ex = EXAMPLES["en"]
    for tok in (r1_tokenizer, r1_think_tokenizer):
        enc = Formatter(tok).encode(ex)
        supervised = tok.decode([t for t, m in zip(enc.input_ids, enc.completion_mask, strict=True) if m])
        assert ex.reasoning in supervised and supervised.endswith(ex.answer + "<｜end▁of▁sentence｜>")
        assert enc.lengths["reasoning"] > 20


def test_r1_prefilled_revision_continues_inside_the_think_block(r1_think_tokenizer):
    fmt = Formatter(r1_think_tokenizer)
    r = fmt.render(EXAMPLES["en"])
    assert fmt.prompt_opens_think and r.prompt.endswith("<｜Assistant｜><think>\n")
    assert r.completion.startswith(EXAMPLES["en"].reasoning) and "<think>" not in r.completion
    drop = Formatter(r1_think_tokenizer, reasoning="drop").render(EXAMPLES["en"])
    assert drop.completion == "\n</think>\n\n" + EXAMPLES["en"].answer + "<｜end▁of▁sentence｜>"


def test_r1_no_double_bos(r1_tokenizer):
    """R1's tokenizer adds BOS when encoding and its template writes BOS: never both."""
    fmt = Formatter(r1_tokenizer)
    enc = fmt.encode(EXAMPLES["en"])
    bos = r1_tokenizer.bos_token_id
    assert enc.input_ids[0] == bos and enc.input_ids[1] != bos
    assert r1_tokenizer(fmt.render(EXAMPLES["en"]).prompt)["input_ids"][:2] == [bos, bos], "the trap is real"


def test_qwen3_drop_mode_uses_enable_thinking_false(qwen3_tokenizer):
    fmt = Formatter(qwen3_tokenizer, reasoning="drop")
    r = fmt.render(EXAMPLES["zh"])
    assert r.prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert r.completion == EXAMPLES["zh"].answer + "<|im_end|>"
    assert fmt.describe()["template_kwargs"] == {"enable_thinking": False}


def test_pad_equal_to_end_of_turn_is_still_trained(smollm2_tokenizer, r1_tokenizer):
    for tok in (smollm2_tokenizer, r1_tokenizer):
        fmt = Formatter(tok)
        assert tok.pad_token_id == fmt.eot_id
        notes = fmt.check()
        assert any("pad token equals the end-of-turn token" in n for n in notes)
        enc = fmt.encode(EXAMPLES["en"])
        assert enc.labels()[-1] == tok.pad_token_id  # labels come from the mask, not from "!= pad"


def test_text_template_for_models_without_chat_template(qwen3_tokenizer):
    import copy

    tok = copy.deepcopy(qwen3_tokenizer)
    tok.chat_template = None
    fmt = Formatter(tok)
    assert fmt.family == TEXT and fmt.eot == tok.eos_token
    ex = Example("Q?", "R", "A", system="S")
    r = fmt.render(ex)
    assert r.prompt == "S\n\n### Question:\nQ?\n\n### Response:\n<think>\n"
    assert r.completion == "R\n</think>\n\nA" + tok.eos_token
    no_sys = fmt.render(Example("Q?", "R", "A"))
    assert no_sys.prompt == "### Question:\nQ?\n\n### Response:\n<think>\n"
    drop = Formatter(tok, reasoning="drop").render(ex)
    assert drop.prompt.endswith("<think>\n\n</think>\n\n") and drop.completion == "A" + tok.eos_token
    Formatter(tok).check()


def test_tutorial_chinese_template_is_expressible(smollm2_tokenizer):
    tpl = "診斷問題：{question}\n詳細分析：{reasoning}\n### 答案：\n{answer}"
    fmt = Formatter(smollm2_tokenizer, text_template=tpl)
    r = fmt.render(Example("頭痛三天？", "考慮偏頭痛。", "偏頭痛。"))
    assert r.prompt == "診斷問題：頭痛三天？\n詳細分析："
    assert r.completion == "考慮偏頭痛。\n### 答案：\n偏頭痛。" + smollm2_tokenizer.eos_token
    enc = fmt.encode(Example("頭痛三天？", "考慮偏頭痛。", "偏頭痛。"))
    assert smollm2_tokenizer.decode(enc.input_ids[enc.answer_start :]).startswith("偏頭痛。")


def test_user_text_with_braces_is_not_interpreted(qwen3_tokenizer):
    import copy

    tok = copy.deepcopy(qwen3_tokenizer)
    tok.chat_template = None
    r = Formatter(tok).render(Example("What is {answer} in {x}?", "{reasoning}", "{question}"))
    assert "What is {answer} in {x}?" in r.prompt and r.completion.startswith(
        "{reasoning}\n</think>\n\n{question}"
    )


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{answer}", "must contain {question}"),
        ("{question} {answer} {reasoning}", "order"),
        ("{question} {reasoning} {answer} tail", "must be last"),
    ],
)
def test_bad_text_templates(qwen3_tokenizer, template, message):
    with pytest.raises(TemplateError, match=message):
        Formatter(qwen3_tokenizer, text_template=template)


def test_template_without_end_of_turn_token_is_refused(qwen3_tokenizer):
    import copy

    tok = copy.deepcopy(qwen3_tokenizer)
    tok.chat_template = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
    with pytest.raises(TemplateError, match="cannot learn to stop"):
        Formatter(tok)


def test_inconsistent_generation_prompt_is_refused(qwen3_tokenizer):
    import copy

    tok = copy.deepcopy(qwen3_tokenizer)
    # The generation prompt says "bot" but assistant turns render as "assistant": inference != training.
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>bot\n{% endif %}"
    )
    fmt = Formatter(tok)
    with pytest.raises(TemplateError, match="not a prefix"):
        fmt.render(EXAMPLES["en"])


def test_boundary_tokenization_is_reported(r1_think_tokenizer):
    notes = Formatter(r1_think_tokenizer).check()
    assert any("tokenize differently apart than together" in n for n in notes)


@needs_shared(R1_TEMPLATE_FIXTURE)
def test_packaged_r1_template_matches_the_shared_fixture():
    from thinktune.models.assets import R1_TEMPLATE_CONFIG

    assert json.loads(R1_TEMPLATE_CONFIG.read_text()) == json.loads(R1_TEMPLATE_FIXTURE.read_text())
