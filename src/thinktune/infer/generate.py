"""Generation through the one formatter, batched or streamed, and splitting outputs into reasoning and answer.

Prompts (already rendered by :class:`~thinktune.formatting.formatter.Formatter`) are tokenized without special
tokens, left-padded and generated together with the KV cache; each stops at the template's end-of-turn token (or
the tokenizer's eos). Eval, compare, chat and the reinforcement stage's sampling all decode through
:func:`generate`, so they follow one rule (:func:`decoding_kwargs`, :func:`seed_for_batch`): greedy by default;
sampling (temperature 0.6, top_p 0.95 is what DeepSeek recommends for R1 models) with no top-k unless asked,
whatever the model's own generation_config says, seeded per batch, so two models given the same prompts, batch
size and seed draw the same random numbers. ``on_text`` streams one prompt's answer as it is generated (chat).

transformers is the backend here; :mod:`thinktune.infer.vllm` is the optional fast path on a GPU.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from thinktune.data.reasoning import THINK_CLOSE, THINK_OPEN, split_reasoning
from thinktune.errors import GenerationError
from thinktune.models.fastpath.decoding import decoding_kernels
from thinktune.models.fastpath.lora import fuse_lora_linears, use_lora_kernel

log = logging.getLogger(__name__)


@dataclass
class Generation:
    prompt: str
    text: str  # the generated text, special tokens removed (think tags kept)
    reasoning: str
    answer: str
    think_closed: bool  # a reasoning block was opened and closed
    think_opened: bool  # a reasoning block was opened (by the prompt or the model)
    stopped: bool  # ended with the end-of-turn token
    hit_max_new_tokens: bool
    new_tokens: int  # tokens generated, the end-of-turn token included
    reasoning_tokens: int = 0
    answer_tokens: int = 0
    interrupted: bool = False  # a streamed answer stopped by Ctrl-C

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def stop_token_ids(tokenizer: Any, eot_id: int) -> list[int]:
    ids = [eot_id]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def _first_prefix_with(tokenizer: Any, ids: Sequence[int], marker: str) -> int:
    """The smallest j such that the decoded ids[:j] contain `marker` (binary search: decoding is monotone)."""
    lo, hi = 1, len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if marker in tokenizer.decode(ids[:mid], skip_special_tokens=True):
            hi = mid
        else:
            lo = mid + 1
    return lo


def span_token_counts(
    tokenizer: Any, ids: Sequence[int], text: str, closed: bool, opened: bool
) -> tuple[int, int]:
    """(reasoning tokens, answer tokens) in generated tokens, not re-tokenized text: the reasoning runs from
    after ``<think>`` (or the start, when the prompt opened it) through ``</think>``; the answer is the rest."""
    if not opened:
        return 0, len(ids)
    close_at = text.find(THINK_CLOSE) if closed else -1
    open_at = text.find(THINK_OPEN)
    start = 0
    if open_at >= 0 and (close_at < 0 or open_at < close_at):
        start = _first_prefix_with(tokenizer, ids, THINK_OPEN)
    if not closed:
        return len(ids) - start, 0
    end = _first_prefix_with(tokenizer, ids, THINK_CLOSE)
    return max(0, end - start), len(ids) - end


def make_generation(
    tokenizer: Any,
    prompt: str,
    new_ids: Sequence[int],
    stops: Sequence[int],
    *,
    max_new_tokens: int,
    prompt_opens_think: bool,
    interrupted: bool = False,
) -> Generation:
    """Cut the generated ids at the first stop token, decode them and split reasoning from answer."""
    new = list(new_ids)
    stopped = False
    for j, t in enumerate(new):
        if t in stops:
            new, stopped = new[:j], True
            break
    text = tokenizer.decode(new, skip_special_tokens=True)
    reasoning, answer, closed, opened = split_reasoning(text, prompt_opens_think)
    reasoning_tokens, answer_tokens = span_token_counts(tokenizer, new, text, closed, opened)
    return Generation(
        prompt=prompt,
        text=text,
        reasoning=reasoning,
        answer=answer,
        think_closed=closed,
        think_opened=opened,
        stopped=stopped,
        hit_max_new_tokens=not stopped and len(new) >= max_new_tokens,
        new_tokens=len(new) + (1 if stopped else 0),
        reasoning_tokens=reasoning_tokens,
        answer_tokens=answer_tokens,
        interrupted=interrupted,
    )


@contextlib.contextmanager
def adapter_enabled(model: Any, enabled: bool) -> Iterator[None]:
    """Run the block with a PeftModel's adapter on (tuned) or off (base); plain models are always 'base'."""
    if enabled:
        if not hasattr(model, "disable_adapter"):
            raise GenerationError("asked for the tuned model's answers, but no adapter is loaded")
        yield
        return
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            yield
    else:
        yield


def penalize_repeats(scores: Any, history: Any, penalty: float, exempt: Any) -> Any:
    """transformers' repetition penalty (a seen token's logit divided by `penalty`, or multiplied when
    negative), except for the `exempt` ids, whose logits stay as they were.

    Generation exempts its stop tokens: every chat prompt already holds the end-of-turn token once per turn, and
    transformers' penalty counts the prompt, so a penalised one makes a model less likely to stop (with SmolLM2
    and a penalty of 1.15, answers that had said everything ran on into markup until max_new_tokens). The think
    tags stay penalised: spared, a GRPO policy looped on ``</think></think>...``."""
    import torch

    score = torch.gather(scores, 1, history)
    score = torch.where(score < 0, score * penalty, score / penalty)
    penalized = scores.scatter(1, history, score)
    penalized[:, exempt] = scores[:, exempt]
    return penalized


class _RepetitionPenalty:
    """:func:`penalize_repeats` as a transformers logits processor, over each row's ids after the first `skip`
    (the batch's prompt width, when only generated tokens count)."""

    def __init__(self, penalty: float, exempt: Sequence[int], skip: int = 0) -> None:
        import torch

        self.penalty, self.skip = penalty, skip
        self.exempt = torch.tensor(list(exempt), dtype=torch.long)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        return penalize_repeats(
            scores, input_ids[:, self.skip :], self.penalty, self.exempt.to(scores.device)
        )


def decoding_kwargs(
    temperature: float, top_p: float, repetition_penalty: float, exempt: Sequence[int] = (), *, skip: int = 0
) -> dict[str, Any]:
    """The arguments every ``model.generate`` call gets: everything decoding depends on is set here, so a model's
    own generation_config (R1 ships do_sample=True, temperature 0.6; Qwen3 top_k 20) cannot change greedy
    decoding or add a top-k the user did not ask for (``top_k=None`` would let the model's own back in).

    A repetition penalty other than 1 leaves the `exempt` ids alone (:func:`penalize_repeats`) and does not count
    each row's first `skip` ids (the prompt, for ``generation.repetition_penalty_scope=generated``): it then runs
    as thinktune's processor, followed by the temperature and top-p warpers in the order transformers applies its
    own (penalty, temperature, top-p), so the arithmetic is transformers' for every other token."""
    sampling = temperature > 0
    kwargs = {
        "do_sample": sampling,
        "temperature": temperature if sampling else 1.0,
        "top_p": top_p if sampling else 1.0,
        "top_k": 0 if sampling else None,  # 0: no top-k; greedy ignores it
        "repetition_penalty": repetition_penalty,
        # Training with gradient checkpointing saves use_cache=False into the config; without the cache every
        # new token re-reads the whole sequence (quadratic time), so the cache is always asked for here.
        "use_cache": True,
    }
    if repetition_penalty != 1.0 and (exempt or skip):
        from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

        processors: list[Any] = [_RepetitionPenalty(repetition_penalty, exempt, skip)]
        if sampling and temperature != 1.0:
            processors.append(TemperatureLogitsWarper(temperature))
        if sampling and top_p < 1.0:
            processors.append(TopPLogitsWarper(top_p))
        kwargs.update(
            repetition_penalty=1.0,
            temperature=1.0,
            top_p=1.0,
            logits_processor=LogitsProcessorList(processors),
        )
    return kwargs


def seed_for_batch(seed: int, first_row: int) -> int:
    """The seed of the batch starting at `first_row`: the same prompts in the same batches draw the same numbers."""
    return seed + first_row


class _TextStream:
    """A transformers streamer that hands each new piece of decoded text to a callback and keeps the new ids
    (so an interrupted answer is still a Generation). Text ending in an incomplete UTF-8 character is held back."""

    def __init__(self, tokenizer: Any, on_text: Callable[[str], None], stops: Sequence[int]) -> None:
        self.tokenizer, self.on_text, self.stops = tokenizer, on_text, set(stops)
        self.ids: list[int] = []
        self._prompt_seen = False
        self._shown = 0

    def put(self, value: Any) -> None:
        if not self._prompt_seen:  # the first call carries the prompt
            self._prompt_seen = True
            return
        self.ids.extend(int(x) for x in value.reshape(-1).tolist())
        shown = [t for t in self.ids if t not in self.stops]
        text = self.tokenizer.decode(shown, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return
        if len(text) > self._shown:
            self.on_text(text[self._shown :])
            self._shown = len(text)

    def end(self) -> None:
        text = self.tokenizer.decode([t for t in self.ids if t not in self.stops], skip_special_tokens=True)
        if len(text) > self._shown:
            self.on_text(text[self._shown :])
            self._shown = len(text)


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    eot_id: int,
    prompt_opens_think: bool = False,
    max_new_tokens: int = 512,
    temperature: float = 0.0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    repetition_penalty_scope: str = "all",
    seed: int = 0,
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
    adapter_names: Sequence[str] | None = None,
    on_text: Callable[[str], None] | None = None,
) -> list[Generation]:
    """Generate for every prompt (already rendered by the Formatter) with transformers; results in input order.

    ``adapter_names`` (one per prompt, ``"__base__"`` for none) runs a PeftModel's rows with different adapters
    in one batch (PEFT's mixed-batch inference). ``on_text`` streams the answer to a single prompt piece by
    piece; Ctrl-C then ends it early and the partial answer comes back with ``interrupted=True``."""
    if on_text is not None and len(prompts) != 1:
        raise GenerationError("streaming (on_text) generates one prompt at a time")
    stops = stop_token_ids(tokenizer, eot_id)
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    new_ids, interrupted = generate_ids(
        model,
        tokenizer,
        encoded,
        stops=stops,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        repetition_penalty_scope=repetition_penalty_scope,
        seed=seed,
        batch_size=batch_size,
        progress=progress,
        adapter_names=adapter_names,
        on_text=on_text,
    )
    return [
        make_generation(
            tokenizer,
            prompt,
            ids,
            stops,
            max_new_tokens=max_new_tokens,
            prompt_opens_think=prompt_opens_think,
            interrupted=interrupted,
        )
        for prompt, ids in zip(prompts, new_ids, strict=True)
    ]


def generate_ids(
    model: Any,
    tokenizer: Any,
    encoded: Sequence[Sequence[int]],
    *,
    stops: Sequence[int],
    max_new_tokens: int = 512,
    temperature: float = 0.0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    repetition_penalty_scope: str = "all",
    seed: int = 0,
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
    adapter_names: Sequence[str] | None = None,
    on_text: Callable[[str], None] | None = None,
) -> tuple[list[list[int]], bool]:
    """The generated token ids of every tokenized prompt (input order), as the model produced them: up to and
    including the first stop token, or `max_new_tokens` ids without one; and whether Ctrl-C cut a stream.
    :func:`generate` decodes them; the reinforcement stage trains on them as they are. The repetition penalty
    counts the prompt and the generated ids (`repetition_penalty_scope` ``all``) or the generated ones alone
    (``generated``)."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    # Longest first: similar lengths share a batch (less padding), and an OOM shows up on the first batch.
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    results: list[list[int] | None] = [None] * len(encoded)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    sampling = temperature > 0
    # Greedy decoding without a stream or mixed adapters goes through the group sampler: the same ids as
    # transformers' generate (tests/test_generate.py), with each finished row leaving the batch where generate
    # decodes it as padding until the batch's longest answer ends.
    own_loop = not sampling and on_text is None and adapter_names is None and not _config_processors(model)
    interrupted = False
    stop_set = set(stops)
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            if own_loop:
                new_rows = sample_groups(
                    model, tokenizer, [encoded[i] for i in idx], 1, stops=stops, max_new_tokens=max_new_tokens,
                    temperature=0.0, repetition_penalty=repetition_penalty,
                    repetition_penalty_scope=repetition_penalty_scope,
                )  # fmt: skip
            else:
                new_rows, cut = _generate_batch(
                    model, tokenizer, [encoded[i] for i in idx], pad_id=pad_id, device=device, stops=stops,
                    max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                    repetition_penalty=repetition_penalty, repetition_penalty_scope=repetition_penalty_scope,
                    seed=seed_for_batch(seed, start) if sampling else None,
                    adapter_names=[adapter_names[i] for i in idx] if adapter_names is not None else None,
                    on_text=on_text,
                )  # fmt: skip
                interrupted = interrupted or cut
            for row, i in enumerate(idx):
                new = new_rows[row]
                # Everything after the first stop token is padding.
                end = next((j + 1 for j, t in enumerate(new) if t in stop_set), len(new))
                results[i] = new[:end]
            if progress:
                progress(min(start + batch_size, len(order)), len(order))
    finally:
        if was_training:
            model.train()
    return [r if r is not None else [] for r in results], interrupted


# generation_config fields with which transformers' greedy decoding adds a logits processor of the model's own
# (their defaults add none); a model that sets one decodes through transformers' generate, which applies it.
_PROCESSOR_FIELDS = (
    "sequence_bias", "bad_words_ids", "suppress_tokens", "begin_suppress_tokens", "forced_bos_token_id",
    "forced_eos_token_id", "forced_decoder_ids", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size",
    "min_length", "min_new_tokens", "exponential_decay_length_penalty", "watermarking_config",
)  # fmt: skip


def _config_processors(model: Any) -> list[str]:
    """The fields of `model`'s generation_config that would add a logits processor to greedy decoding."""
    config = getattr(model, "generation_config", None)
    return [f for f in _PROCESSOR_FIELDS if config is not None and getattr(config, f, None)]


def left_pad(batch: Sequence[Sequence[int]], pad_id: int) -> tuple[Any, Any]:
    """Token id rows padded on the left to the longest (generation appends on the right), and their mask."""
    import torch

    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, width - len(ids) :] = torch.tensor(list(ids), dtype=torch.long)
        attention[row, width - len(ids) :] = 1
    return input_ids, attention


def _generate_batch(
    model: Any,
    tokenizer: Any,
    batch: Sequence[Sequence[int]],
    *,
    pad_id: int,
    device: Any,
    stops: Sequence[int],
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    repetition_penalty: float,
    repetition_penalty_scope: str,
    seed: int | None,
    adapter_names: list[str] | None,
    on_text: Callable[[str], None] | None,
) -> tuple[list[list[int]], bool]:
    """One left-padded batch through transformers' generate (sampling, a stream, mixed adapters): each row's new
    ids, and whether Ctrl-C cut the stream."""
    import torch

    input_ids, attention = left_pad(batch, pad_id)
    width = input_ids.shape[1]
    skip = width if repetition_penalty_scope == "generated" else 0
    decoding = decoding_kwargs(temperature, top_p, repetition_penalty, stops, skip=skip)
    if seed is not None:
        torch.manual_seed(seed)
    rows: dict[str, Any] = {"adapter_names": adapter_names} if adapter_names is not None else {}
    stream = _TextStream(tokenizer, on_text, stops) if on_text is not None else None
    if stream is not None:
        rows["streamer"] = stream
    try:
        with torch.no_grad(), decoding_kernels(model, merge=adapter_names is None):
            out = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                max_new_tokens=max_new_tokens,
                eos_token_id=list(stops),
                pad_token_id=pad_id,
                **decoding,
                **rows,
            )
    except KeyboardInterrupt:
        if stream is None:
            raise
        return [stream.ids], True
    return [out[row, width:].tolist() for row in range(len(batch))], False


def _top_p(scores: Any, top_p: float) -> Any:
    """transformers' TopPLogitsWarper, exactly: drop the least likely tokens outside the `top_p` mass."""
    import torch

    sorted_logits, sorted_indices = torch.sort(scores, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= (1 - top_p)
    remove[..., -1:] = 0
    return scores.masked_fill(remove.scatter(1, sorted_indices, remove), float("-inf"))


def next_scores(
    logits: Any, history: Any, penalty: float, exempt: Any, temperature: float, top_p: float
) -> Any:
    """The next token's scores as transformers' sampler computes them, in its order: the repetition penalty over
    `history` (:func:`penalize_repeats`; none when `history` is None), then temperature and top-p when sampling
    (`temperature` > 0)."""
    scores = logits
    if history is not None:
        scores = penalize_repeats(scores, history, penalty, exempt)
    if temperature > 0:
        scores = scores / temperature
        if top_p < 1.0:
            scores = _top_p(scores, top_p)
    return scores


def draw(probs: Any) -> Any:
    """One token per row from the categorical distributions `probs` (rows summing to 1), by inverting each row's
    cumulative distribution at a uniform draw: one random number per row where ``torch.multinomial`` draws one
    per vocabulary entry (an exponential each: 7.3 ms for 8 rows of a 49k vocabulary on 2 Zen 5 cores, against
    0.2 ms here, a tenth of a SmolLM2 decoding step). The same distribution, other draws for a given seed; a
    token of probability 0 (cut by top-p) is never drawn: the search takes the first cumulative sum above the
    draw, and a zero entry never raises it."""
    import torch

    cumulative = probs.double().cumsum(dim=-1)
    u = torch.rand((probs.shape[0], 1), dtype=torch.float64, device=probs.device) * cumulative[:, -1:]
    return torch.searchsorted(cumulative, u, right=True).squeeze(1).clamp_(max=probs.shape[-1] - 1)


def sample_groups(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    group: int,
    *,
    stops: Sequence[int],
    max_new_tokens: int,
    temperature: float,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    repetition_penalty_scope: str = "all",
    seed: int = 0,
) -> list[list[int]]:
    """`group` completions of every tokenized prompt (prompt i's at ``i * group ...``), decoded as
    :func:`generate_ids` decodes (transformers' temperature and top-p arithmetic, the repetition penalty of
    :func:`penalize_repeats`, ids up to and including the first stop token), with three savings for GRPO's
    groups: each prompt is prefilled once and its KV cache shared by its `group` completions, a finished
    completion leaves the batch (transformers keeps decoding it as padding until the longest one ends), and each
    token is drawn by :func:`draw` (the same distribution as transformers' sampler, other draws). `temperature` 0
    is greedy: the same ids as transformers' batched generate (:func:`generate_ids` decodes greedily with it)."""
    import torch
    from transformers import DynamicCache

    if not prompts:
        return []
    stop_ids = torch.tensor(list(stops))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    device = next(model.parameters()).device
    ids, attention = left_pad(prompts, pad_id)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    ids, attention, positions = ids.to(device), attention.to(device), positions.to(device)
    was_training = model.training
    model.eval()
    results: list[list[int]] = [[] for _ in range(len(prompts) * group)]
    try:
        with torch.no_grad(), decoding_kernels(model):
            cache = DynamicCache()
            out = model(
                input_ids=ids, attention_mask=attention, position_ids=positions, past_key_values=cache,
                use_cache=True, logits_to_keep=1,
            )  # fmt: skip
            logits = out.logits[:, -1].float().repeat_interleave(group, dim=0)
            del out
            cache.batch_repeat_interleave(group)
            attention = attention.repeat_interleave(group, dim=0)
            last = positions[:, -1].repeat_interleave(group, dim=0)
            history = None
            if repetition_penalty != 1.0:
                history = ids.repeat_interleave(group, dim=0)
                if repetition_penalty_scope == "generated":
                    history = history[:, :0]  # the prompt uncounted: only the drawn tokens join it
            exempt = torch.tensor(list(stops), device=device)
            active = torch.arange(len(results), device=device)
            if temperature > 0:
                torch.manual_seed(seed)
            for step in range(max_new_tokens):
                scores = next_scores(logits, history, repetition_penalty, exempt, temperature, top_p)
                chosen = (
                    draw(torch.softmax(scores, dim=-1)) if temperature > 0 else torch.argmax(scores, dim=-1)
                )
                for row, token in zip(active.tolist(), chosen.tolist(), strict=True):
                    results[row].append(token)
                done = torch.isin(chosen, stop_ids.to(chosen.device))
                if step + 1 == max_new_tokens or bool(done.all()):
                    break
                if bool(done.any()):
                    keep = (~done).nonzero().squeeze(1)
                    cache.batch_select_indices(keep)
                    active, chosen, attention, last = active[keep], chosen[keep], attention[keep], last[keep]
                    history = history[keep] if history is not None else None
                attention = torch.cat([attention, attention.new_ones((attention.shape[0], 1))], dim=1)
                last = last + 1
                if history is not None:
                    history = torch.cat([history, chosen[:, None]], dim=1)
                out = model(
                    input_ids=chosen[:, None], attention_mask=attention, position_ids=last[:, None],
                    past_key_values=cache, use_cache=True,
                )  # fmt: skip
                logits = out.logits[:, -1].float()
                del out
    finally:
        if was_training:
            model.train()
    return results


def _mixable(model: Any) -> bool:
    """One active plain LoRA adapter (no DoRA): what PEFT's mixed batches support."""
    config = getattr(model, "peft_config", {}).get(getattr(model, "active_adapter", None))
    return config is not None and config.peft_type == "LORA" and not getattr(config, "use_dora", False)


class HFGenerator:
    """transformers generation on a loaded model; `adapter=False` switches a PeftModel's adapter off."""

    backend = "hf"

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer

    @property
    def has_adapter(self) -> bool:
        return hasattr(self.model, "disable_adapter")

    def __call__(self, prompts: Sequence[str], *, adapter: bool, **kwargs: Any) -> list[Generation]:
        with adapter_enabled(self.model, adapter):
            return generate(self.model, self.tokenizer, prompts, **kwargs)

    def both(self, prompts: Sequence[str], **kwargs: Any) -> tuple[list[Generation], list[Generation]] | None:
        """Base and tuned answers from one pass of greedy decoding: each prompt twice in the same batch, once
        with the adapter and once without (PEFT's mixed batches). Decoding one token costs about the same for
        6 rows as for 3 on a CPU (reading the weights dominates), so this nearly halves a comparison's time.
        None where it does not apply: sampling (each side keeps its own seeded draws), or no plain LoRA adapter."""
        model = self.model
        if kwargs.get("temperature", 0.0) > 0 or not self.has_adapter or not _mixable(model):
            return None
        if use_lora_kernel("auto", next(model.parameters()).device.type):
            # a mixed batch without PEFT's per-module gather/scatter: ~25% of each decoded token on a CPU
            fuse_lora_linears(model)
        n = len(prompts)
        tuned_name = model.active_adapter
        batch = max(2, kwargs.pop("batch_size", 8))
        gens = generate(
            model,
            self.tokenizer,
            [*prompts, *prompts],
            adapter_names=["__base__"] * n + [tuned_name] * n,
            batch_size=batch,
            **kwargs,
        )
        return gens[:n], gens[n:]

    def close(self) -> None:
        self.model = None
