"""Batched generation: reasoning/answer split on every output shape, left padding, KV cache, stopping at the
end-of-turn token, greedy and seeded sampling, and backend selection (vLLM only where it can run)."""

from __future__ import annotations

import sys
import types

import pytest

from thinktune.data.reasoning import split_reasoning
from thinktune.errors import GenerationError
from thinktune.formatting.formatter import Formatter
from thinktune.infer.generate import HFGenerator, generate
from thinktune.infer.vllm import VLLMGenerator, pick_backend

# ------------------------------------------------------------------------------------------ split


@pytest.mark.parametrize(
    "text, prompt_opens, expected",
    [
        # the prompt opened <think> (R1 revisions, plain-text template): the text starts inside the block
        (
            "Let me think.\n</think>\n\nThe answer is B.",
            True,
            ("Let me think.", "The answer is B.", True, True),
        ),
        # ... and a model that writes <think> again anyway
        ("<think>\nHmm.\n</think>\nB", True, ("Hmm.", "B", True, True)),
        # the model opens the block itself (Qwen3, original R1 template)
        ("<think>\nStep 1.\nStep 2.\n</think>\n\nFinal.", False, ("Step 1.\nStep 2.", "Final.", True, True)),
        # an empty think block (Qwen3 with thinking disabled writes one)
        ("<think>\n\n</think>\n\nJust the answer.", False, ("", "Just the answer.", True, True)),
        # never closed: ran out of tokens inside the reasoning
        ("<think>\nStep 1. Step 2. Step", False, ("Step 1. Step 2. Step", "", False, True)),
        ("still thinking about it", True, ("still thinking about it", "", False, True)),
        # closed without an opening tag (a template opened it out of sight)
        ("reasoning here</think>answer here", False, ("reasoning here", "answer here", True, True)),
        # no think block at all
        ("Plain answer, no reasoning.", False, ("", "Plain answer, no reasoning.", False, False)),
        ("", False, ("", "", False, False)),
        # a preamble before <think> is visible output: it belongs to the answer
        ("Sure.\n<think>why</think>Because.", False, ("why", "Sure.\n\nBecause.", True, True)),
        # only the first </think> closes the block; a stray one later stays in the answer
        ("<think>a</think>b</think>c", False, ("a", "b</think>c", True, True)),
    ],
)
def test_split_reasoning_every_shape(text, prompt_opens, expected):
    assert split_reasoning(text, prompt_opens) == expected


# ------------------------------------------------------------------------------------------ generation


@pytest.fixture(scope="module")
def tiny(tiny_qwen2_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_qwen2_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir, dtype=torch.float32)
    fmt = Formatter(tok)
    return model, tok, fmt


QUESTIONS = [
    "What causes scurvy?",
    "A 60-year-old man has crushing chest pain radiating to the left arm. What is the first test to order?",
    "发热三天，咳嗽。可能的诊断？",
    "Ping",
    "Which electrolyte abnormality causes peaked T waves on an ECG in a patient with renal failure?",
]


def _run(tiny, questions=QUESTIONS, **kw):
    model, tok, fmt = tiny
    prompts = [fmt.prompt(q) for q in questions]
    kw = {"max_new_tokens": 8, **kw}
    return generate(model, tok, prompts, eot_id=fmt.eot_id, prompt_opens_think=fmt.prompt_opens_think, **kw)


def test_batched_equals_one_at_a_time_and_keeps_input_order(tiny):
    batched = _run(tiny, batch_size=4)
    single = _run(tiny, batch_size=1)
    assert [g.text for g in batched] == [g.text for g in single]
    assert [g.prompt for g in batched] == [tiny[2].prompt(q) for q in QUESTIONS]
    assert all(g.new_tokens == 8 and g.hit_max_new_tokens and not g.stopped for g in batched)


def test_generation_uses_the_kv_cache_even_when_training_switched_it_off(tiny):
    model = tiny[0]
    model.config.use_cache = False  # what training with gradient checkpointing leaves in the config
    lengths: list[int] = []
    hook = model.model.register_forward_pre_hook(
        lambda mod, args, kwargs: lengths.append(
            (kwargs.get("input_ids") if kwargs.get("input_ids") is not None else args[0]).shape[1]
        ),
        with_kwargs=True,
    )
    try:
        _run(tiny, questions=QUESTIONS[:2], batch_size=2, max_new_tokens=6)
    finally:
        hook.remove()
        model.config.use_cache = True
    # one pass over the prompt, then one token per step: the cache holds everything before it
    assert len(lengths) == 6 and lengths[0] > 1 and lengths[1:] == [1] * 5


def test_stops_at_end_of_turn_and_cuts_other_rows_padding(tiny):
    model, tok, fmt = tiny
    prompt_ids = tok(fmt.prompt("Ping"), add_special_tokens=False)["input_ids"]
    reply = tok("<think>\nok\n</think>\n\nPong", add_special_tokens=False)["input_ids"]
    # Script the random model: after the prompt of "Ping" it writes the reply, then the end-of-turn token.
    script = [*prompt_ids[-2:], *reply, fmt.eot_id]
    bias = {tuple(script[: i + 1][-3:]): 100.0 for i in range(2, len(script))}
    old = model.generation_config.sequence_bias
    model.generation_config.sequence_bias = bias
    try:
        gens = _run(tiny, questions=["Ping", QUESTIONS[1]], batch_size=2, max_new_tokens=len(reply) + 6)
    finally:
        model.generation_config.sequence_bias = old
    ping, other = gens
    assert ping.stopped and not ping.hit_max_new_tokens
    assert ping.new_tokens == len(reply) + 1  # the end-of-turn token counts as generated
    assert (ping.reasoning, ping.answer, ping.think_closed) == ("ok", "Pong", True)
    assert ping.reasoning_tokens + ping.answer_tokens == len(reply) - 1  # the opening <think> is in neither
    assert ping.answer_tokens == len(tok("\n\nPong", add_special_tokens=False)["input_ids"])
    assert "<｜end▁of▁sentence｜>" not in ping.text
    assert other.hit_max_new_tokens and not other.stopped


def test_greedy_ignores_the_models_own_sampling_defaults(tiny):
    model = tiny[0]
    plain = [g.text for g in _run(tiny)]
    gc = model.generation_config
    saved = (gc.do_sample, gc.temperature, gc.top_p, gc.top_k)
    gc.do_sample, gc.temperature, gc.top_p, gc.top_k = True, 0.6, 0.95, 20  # what R1/Qwen3 ship
    try:
        assert [g.text for g in _run(tiny)] == plain
    finally:
        gc.do_sample, gc.temperature, gc.top_p, gc.top_k = saved


def test_sampling_is_seeded(tiny):
    def sample(seed: int) -> list[str]:
        return [
            g.text
            for g in _run(tiny, QUESTIONS[:2], temperature=1.0, top_p=0.95, seed=seed, max_new_tokens=10)
        ]

    first = sample(7)
    assert sample(7) == first
    assert sample(8) != first


def test_repetition_penalty_spares_the_stop_tokens(tiny):
    """transformers' penalty for every other token, the think tags included; the stop tokens keep their logits
    (every chat prompt holds the end-of-turn token, so a penalised one makes answers run on past their end)."""
    import torch
    from transformers import RepetitionPenaltyLogitsProcessor

    from thinktune.infer.generate import penalize_repeats, stop_token_ids

    model, tok, fmt = tiny
    prompt = tok(fmt.prompt(QUESTIONS[0]), add_special_tokens=False)["input_ids"]
    stops = stop_token_ids(tok, fmt.eot_id)
    think = tok("</think>", add_special_tokens=False)["input_ids"]
    history = torch.tensor([prompt + stops + think])
    scores = torch.randn(1, len(tok)) * 4
    theirs = RepetitionPenaltyLogitsProcessor(1.3)(history, scores.clone())
    ours = penalize_repeats(scores, history, 1.3, torch.tensor(stops))
    assert torch.equal(ours[:, stops], scores[:, stops])
    assert not torch.equal(theirs[:, stops], scores[:, stops])  # transformers' own penalises them
    others = torch.ones(len(tok), dtype=torch.bool)
    others[stops] = False
    assert torch.equal(ours[:, others], theirs[:, others])
    assert not torch.equal(ours[:, think], scores[:, think])


def test_generated_scope_leaves_the_prompt_uncounted(tiny):
    """With repetition_penalty_scope=generated, batched left-padded greedy decoding gives transformers' own
    penalty with prompt_ignore_length (one prompt at a time), and differs from the penalty over prompt and
    answer."""
    import torch
    from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor

    from thinktune.infer.generate import generate_ids

    model, tok, fmt = tiny
    prompts = _ids(tiny, QUESTIONS[:3])
    kw = dict(stops=[-1], max_new_tokens=16, repetition_penalty=1.5, batch_size=3)
    got, _ = generate_ids(model, tok, prompts, repetition_penalty_scope="generated", **kw)
    for prompt, ids in zip(prompts, got, strict=True):
        x = torch.tensor([prompt])
        penalty = RepetitionPenaltyLogitsProcessor(1.5, prompt_ignore_length=len(prompt))
        out = model.generate(
            input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=16, do_sample=False,
            eos_token_id=[-1], pad_token_id=0, logits_processor=LogitsProcessorList([penalty]),
        )  # fmt: skip
        assert out[0, len(prompt) :].tolist() == ids
    everything, _ = generate_ids(model, tok, prompts, **kw)
    assert everything != got


def test_group_sampler_generated_scope_equals_generate_ids(tiny):
    from thinktune.infer.generate import generate_ids, sample_groups

    model, tok, fmt = tiny
    prompts = _ids(tiny, QUESTIONS[:2])
    kw = dict(stops=[-1], max_new_tokens=12, repetition_penalty=1.5, repetition_penalty_scope="generated")
    repeated = [p for p in prompts for _ in range(2)]
    want, _ = generate_ids(model, tok, repeated, batch_size=len(repeated), **kw)
    assert sample_groups(model, tok, prompts, 2, temperature=0.0, **kw) == want


@pytest.mark.parametrize("temperature,top_p", [(0.0, 1.0), (0.8, 0.9)])
def test_penalised_decoding_is_transformers_order_of_penalty_temperature_and_top_p(tiny, temperature, top_p):
    """With an exempt id that never occurs, thinktune's processors draw exactly what transformers' own
    repetition penalty, temperature and top-p draw: the same arithmetic in the same order."""
    import torch

    from thinktune.infer.generate import decoding_kwargs

    model, tok, fmt = tiny
    ids = torch.tensor([tok(fmt.prompt(QUESTIONS[1]), add_special_tokens=False)["input_ids"]])

    def draw(exempt):
        torch.manual_seed(5)
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, eos_token_id=[-1],
            pad_token_id=0, **decoding_kwargs(temperature, top_p, 1.3, exempt),
        )  # fmt: skip
        return out[0, ids.shape[1] :].tolist()

    native = draw(())
    unused = next(i for i in range(len(tok)) if i not in native and i not in ids[0].tolist())
    assert draw([unused]) == native


def test_hf_generator_switches_a_peft_adapter_off_for_the_base(tiny):
    import torch
    from peft import LoraConfig, get_peft_model

    model, tok, fmt = tiny
    plain = [g.text for g in _run(tiny)]
    torch.manual_seed(0)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=64, target_modules="all-linear", init_lora_weights=False)
    )
    try:
        gen = HFGenerator(peft_model, tok)
        prompts = [fmt.prompt(q) for q in QUESTIONS]
        kw = {"eot_id": fmt.eot_id, "max_new_tokens": 8}
        base = [g.text for g in gen(prompts, adapter=False, **kw)]
        tuned = [g.text for g in gen(prompts, adapter=True, **kw)]
        assert base == plain  # adapter off == the model without the adapter
        assert tuned != base
        with pytest.raises(GenerationError, match="no adapter"):
            HFGenerator(model, tok)(prompts, adapter=True, **kw)
    finally:
        peft_model.unload()


# ------------------------------------------------------------------------------------------ backends


def test_backend_selection():
    assert pick_backend("auto", vllm_present=True, cuda=True) == "vllm"
    assert pick_backend("auto", vllm_present=True, cuda=False) == "hf"
    assert pick_backend("auto", vllm_present=False, cuda=True) == "hf"
    assert pick_backend("auto", vllm_present=True, cuda=True, load_in_4bit=True) == "hf"
    assert pick_backend("hf", vllm_present=True, cuda=True) == "hf"
    assert pick_backend("vllm", vllm_present=True, cuda=True) == "vllm"
    with pytest.raises(GenerationError, match=r"vLLM is not installed: pip install 'thinktune\[vllm\]'"):
        pick_backend("vllm", vllm_present=False, cuda=True)
    with pytest.raises(GenerationError, match="needs a CUDA GPU"):
        pick_backend("vllm", vllm_present=True, cuda=False)
    with pytest.raises(GenerationError, match="use auto, hf or vllm"):
        pick_backend("tgi")
    # vLLM's penalty always counts the prompt: auto takes transformers, an explicit vllm is refused with the fix
    assert pick_backend("auto", vllm_present=True, cuda=True, prompt_free_penalty=True) == "hf"
    with pytest.raises(GenerationError, match="repetition_penalty_scope=all, or generation.backend=hf"):
        pick_backend("vllm", vllm_present=True, cuda=True, prompt_free_penalty=True)


def test_prompt_free_penalty_needs_a_penalty_and_the_generated_scope():
    from thinktune.config import GenerationConfig

    assert GenerationConfig(repetition_penalty=1.15, repetition_penalty_scope="generated").prompt_free_penalty
    assert not GenerationConfig(repetition_penalty=1.15).prompt_free_penalty
    assert not GenerationConfig(repetition_penalty_scope="generated").prompt_free_penalty


def test_vllm_generator_glue_against_a_stand_in_module(monkeypatch, tiny):
    """vLLM cannot run here (no GPU, not installed). A stand-in with vLLM's call signatures checks our side of the
    glue: token-id prompts, the adapter as a LoRARequest only for the tuned model, stop handling, order."""
    _, tok, fmt = tiny
    calls = {}

    class LLM:
        def __init__(self, **kwargs):
            calls["init"] = kwargs

        def generate(self, inputs, params, lora_request=None, use_tqdm=True):
            calls.setdefault("generate", []).append((inputs, params, lora_request))
            reply = tok("<think>\nr\n</think>\n\nThe answer is B", add_special_tokens=False)["input_ids"]
            out = types.SimpleNamespace(token_ids=reply + [fmt.eot_id], finish_reason="stop")
            return [types.SimpleNamespace(outputs=[out]) for _ in inputs]

    class SamplingParams:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    class LoRARequest:
        def __init__(self, name, lora_id, path):
            self.args = (name, lora_id, path)

    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = LLM, SamplingParams
    lora_mod = types.ModuleType("vllm.lora.request")
    lora_mod.LoRARequest = LoRARequest
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.lora", types.ModuleType("vllm.lora"))
    monkeypatch.setitem(sys.modules, "vllm.lora.request", lora_mod)

    gen = VLLMGenerator("/models/base", tok, adapter_dir="/runs/x/adapter", lora_rank=16, seed=3)
    assert calls["init"]["enable_lora"] and calls["init"]["max_lora_rank"] == 16
    prompts = [fmt.prompt(q) for q in QUESTIONS[:2]]
    tuned = gen(
        prompts, adapter=True, eot_id=fmt.eot_id, max_new_tokens=32, temperature=0.6, top_p=0.95, seed=3
    )
    base = gen(prompts, adapter=False, eot_id=fmt.eot_id, max_new_tokens=32)
    (inputs, params, lora), (_, greedy_params, no_lora) = calls["generate"]
    assert inputs[0]["prompt_token_ids"] == tok(prompts[0], add_special_tokens=False)["input_ids"]
    assert lora.args == ("tuned", 1, "/runs/x/adapter") and no_lora is None
    assert params.kwargs["temperature"] == 0.6 and params.kwargs["seed"] == 3
    assert params.kwargs["stop_token_ids"][0] == fmt.eot_id
    assert greedy_params.kwargs["temperature"] == 0.0 and greedy_params.kwargs["seed"] is None
    for g in tuned + base:
        assert (g.reasoning, g.answer, g.stopped, g.think_closed) == ("r", "The answer is B", True, True)


# ------------------------------------------------------------------------------------------ GRPO's group sampler


def _ids(tiny, questions):
    model, tok, fmt = tiny
    return [tok(fmt.prompt(q), add_special_tokens=False)["input_ids"] for q in questions]


@pytest.mark.parametrize("temperature,top_p,penalty", [(1.0, 1.0, 1.0), (0.7, 0.9, 1.0), (0.8, 0.95, 1.3)])
def test_group_sampler_scores_are_transformers(temperature, top_p, penalty):
    """The distribution the group sampler draws from is transformers' sampler's: repetition penalty (stop ids
    exempt, as generate_ids runs it), temperature and top-p, in transformers' order."""
    import torch
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

    from thinktune.infer.generate import _RepetitionPenalty, next_scores

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 50, generator=gen) * 3
    history = torch.randint(0, 50, (4, 12), generator=gen)
    exempt = torch.tensor([3, 7])
    processors = LogitsProcessorList()
    if penalty != 1.0:
        processors.append(_RepetitionPenalty(penalty, [3, 7]))
    processors += [TemperatureLogitsWarper(temperature), TopPLogitsWarper(top_p)]
    want = processors(history, logits.clone())
    got = next_scores(logits, history if penalty != 1.0 else None, penalty, exempt, temperature, top_p)
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    assert torch.allclose(got.softmax(-1), want.softmax(-1), atol=1e-6)


def test_draw_samples_the_distribution_and_never_a_cut_token():
    import torch

    from thinktune.infer.generate import draw

    probs = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.2, 0.0]]).repeat(20_000, 1)
    torch.manual_seed(0)
    counts = torch.bincount(draw(probs), minlength=6).double() / 20_000
    assert counts[[0, 2, 5]].sum() == 0  # probability 0 (top-p cut them): never drawn
    assert torch.allclose(counts[[1, 3, 4]], torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64), atol=0.015)
    torch.manual_seed(0)
    again = draw(probs[:5])
    torch.manual_seed(0)
    assert torch.equal(draw(probs[:5]), again)  # seeded


def _transformers_greedy(model, prompts, stop, max_new_tokens, penalty=1.0):
    """transformers' own batched greedy generate (left-padded), each row cut after its first `stop`."""
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + list(p) for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=[stop],
        pad_token_id=0, repetition_penalty=penalty,
    )  # fmt: skip
    rows = [row[width:].tolist() for row in out]
    return [row[: row.index(stop) + 1] if stop in row else row for row in rows]


def test_group_sampler_greedy_equals_transformers_with_rows_leaving_the_batch(tiny):
    """Greedy, prompts of different lengths repeated as GRPO's groups, and a stop token one row reaches early
    (it leaves the batch; the others go on): the same ids as transformers' batched generate."""
    from thinktune.infer.generate import sample_groups

    model, tok, fmt = tiny
    prompts = _ids(tiny, QUESTIONS[:3])
    stop = _transformers_greedy(model, prompts[:1], -1, 12)[0][
        4
    ]  # prompt 0's fifth token: its rows stop there
    repeated = [p for p in prompts for _ in range(3)]
    want = _transformers_greedy(model, repeated, stop, 12)
    got = sample_groups(model, tok, prompts, 3, stops=[stop], max_new_tokens=12, temperature=0.0)
    assert got == want
    assert [len(x) for x in got[:3]] == [5, 5, 5] and got[0][-1] == stop
    assert all(len(x) == 12 or x[-1] == stop for x in got)


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_greedy_generate_ids_is_transformers_without_decoding_the_finished_rows(tiny, monkeypatch, penalty):
    """Greedy decoding without a stream or mixed adapters runs thinktune's own loop (transformers' generate is
    not called): the ids of transformers' batched generate, a row that stops leaving the batch. A model whose
    generation_config adds a processor of its own (here a sequence bias) still decodes through generate."""
    import torch

    from thinktune.infer.generate import generate_ids

    model, tok, fmt = tiny
    prompts = _ids(tiny, QUESTIONS[:4])
    free = _transformers_greedy(model, prompts, -1, 10, penalty)
    # a stop token some row reaches after its first step and another row never writes
    stop = next(t for row in free for t in row[1:] if any(t not in other for other in free))
    order = sorted(
        range(len(prompts)), key=lambda i: -len(prompts[i])
    )  # generate_ids' batches: longest first
    want = _transformers_greedy(model, [prompts[i] for i in order], stop, 10, penalty)
    want = [want[order.index(i)] for i in range(len(prompts))]
    widths = []
    real_forward = model.forward
    monkeypatch.setattr(
        model, "forward", lambda *a, **k: widths.append(k["input_ids"].shape[0]) or real_forward(*a, **k)
    )
    calls = []
    real_generate = model.generate
    monkeypatch.setattr(model, "generate", lambda *a, **k: calls.append(1) or real_generate(*a, **k))
    got, _ = generate_ids(
        model, tok, prompts, stops=[stop], max_new_tokens=10, batch_size=4, repetition_penalty=penalty
    )
    assert got == want and not calls
    assert any(len(g) < 10 for g in got) and min(widths) < max(widths) == 4  # the stopped row left the batch
    model.generation_config.sequence_bias = {(stop,): -100.0}
    try:
        biased, _ = generate_ids(model, tok, prompts, stops=[stop], max_new_tokens=10, batch_size=4)
    finally:
        model.generation_config.sequence_bias = None
    assert calls and all(stop not in g for g in biased)
    assert torch.is_grad_enabled()


def test_group_sampler_is_seeded_and_groups_differ(tiny):
    from thinktune.infer.generate import sample_groups

    model, tok, fmt = tiny
    prompts = _ids(tiny, QUESTIONS[:2])
    kw = dict(stops=[fmt.eot_id], max_new_tokens=10, temperature=1.0)
    a = sample_groups(model, tok, prompts, 4, seed=3, **kw)
    assert (
        a
        == sample_groups(model, tok, prompts, 4, seed=3, **kw)
        != sample_groups(model, tok, prompts, 4, seed=4, **kw)
    )
    assert len(a) == 8 and len({tuple(x) for x in a[:4]}) > 1  # a group's completions are drawn apart


def test_prompt_groups_reads_trls_order():
    from thinktune.train.grpo import prompt_groups

    assert prompt_groups(["a", "a", "b", "b"]) == 2
    assert prompt_groups(["a"] * 4) == 4
    assert prompt_groups(["a", "b", "a", "b"]) == 1  # no run of repeats: each prompt its own group
    assert prompt_groups(["a", "a", "b"]) is None
