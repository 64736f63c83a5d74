"""Batched generation through the one formatter, and splitting outputs into reasoning and answer.

Prompts (already rendered by :class:`thinktune.formatting.Formatter`) are tokenized without special tokens,
left-padded and generated together with the KV cache; each stops at the template's end-of-turn token (or the
tokenizer's eos). Greedy by default; sampling (temperature 0.6, top_p 0.95 is what DeepSeek recommends for
R1 models) is seeded per batch, so two models given the same prompts, batch size and seed draw the same
random numbers.

Two backends:

``hf``    transformers ``generate`` on the model in hand (a PeftModel's adapter can be switched off with
          ``adapter=False`` to get the base model's answers from the same weights);
``vllm``  the optional fast path on a GPU: the base model in vLLM, the run's adapter as a ``LoRARequest``.
          Used when vLLM is installed and CUDA is present (``generation.backend=auto``), or on request.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from thinktune.data import THINK_CLOSE, THINK_OPEN
from thinktune.errors import ThinktuneError

log = logging.getLogger(__name__)


class GenerationError(ThinktuneError, RuntimeError):
    """Generation cannot run as requested; the message says which setting to change."""


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def split_reasoning(text: str, prompt_opens_think: bool = False) -> tuple[str, str, bool, bool]:
    """Split generated text into (reasoning, answer, think_closed, think_opened).

    The shapes a reasoning model produces:
    - the prompt opened ``<think>`` (R1 revisions, plain-text template): the text starts inside the block
      (a model that writes ``<think>`` again anyway is tolerated);
    - the model opens ``<think>`` itself (Qwen3, original R1 template), possibly after a short preamble;
    - the block is never closed (ran out of tokens or looped): everything is reasoning, the answer is empty;
    - ``</think>`` without any ``<think>`` (a template that opens it out of sight): text before it is reasoning;
    - no think block at all: everything is the answer.
    Text outside the block before ``<think>`` belongs to the answer (it is what the user reads).
    """
    body, preamble = text, ""
    opened = prompt_opens_think
    if opened:
        stripped = body.lstrip()
        if stripped.startswith(THINK_OPEN):
            body = stripped[len(THINK_OPEN) :]
    else:
        at, close = body.find(THINK_OPEN), body.find(THINK_CLOSE)
        if at >= 0 and (close < 0 or at < close):
            preamble, body, opened = body[:at], body[at + len(THINK_OPEN) :], True
        elif close >= 0:
            opened = True
    if not opened:
        return "", body.strip(), False, False
    if THINK_CLOSE not in body:
        return body.strip(), preamble.strip(), False, True
    reasoning, answer = body.split(THINK_CLOSE, 1)
    answer = (preamble.strip() + "\n\n" + answer.strip()).strip() if preamble.strip() else answer.strip()
    return reasoning.strip(), answer, True, True


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
    seed: int = 0,
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
    adapter_names: Sequence[str] | None = None,
) -> list[Generation]:
    """Generate for every prompt (already rendered by the Formatter) with transformers; results in input order.

    ``adapter_names`` (one per prompt, ``"__base__"`` for none) runs a PeftModel's rows with different adapters
    in one batch (PEFT's mixed-batch inference)."""
    import torch

    from thinktune import kernels

    stops = stop_token_ids(tokenizer, eot_id)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    # Longest first: similar lengths share a batch (less padding), and an OOM shows up on the first batch.
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    results: list[Generation | None] = [None] * len(prompts)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    sampling = temperature > 0
    # Everything decoding depends on is set here, so a model's own generation_config (R1 ships do_sample=True,
    # temperature 0.6; Qwen3 top_k 20) cannot change greedy decoding or add a top-k the user did not ask for.
    decoding: dict[str, Any] = {
        "do_sample": sampling,
        "temperature": temperature if sampling else 1.0,
        "top_p": top_p if sampling else 1.0,
        "top_k": 0 if sampling else None,
        "repetition_penalty": repetition_penalty,
        # Training with gradient checkpointing saves use_cache=False into the config; without the cache every
        # new token re-reads the whole sequence (quadratic time), so the cache is always asked for here.
        "use_cache": True,
    }
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = max(len(encoded[i]) for i in idx)
            input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids = encoded[i]
                input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                attention[row, width - len(ids) :] = 1
            if sampling:
                torch.manual_seed(seed + start)
            rows = {"adapter_names": [adapter_names[i] for i in idx]} if adapter_names is not None else {}
            with torch.no_grad(), kernels.skinny_head(model):
                out = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention.to(device),
                    max_new_tokens=max_new_tokens,
                    eos_token_id=stops,
                    pad_token_id=pad_id,
                    **decoding,
                    **rows,
                )
            for row, i in enumerate(idx):
                results[i] = make_generation(
                    tokenizer,
                    prompts[i],
                    out[row, width:].tolist(),
                    stops,
                    max_new_tokens=max_new_tokens,
                    prompt_opens_think=prompt_opens_think,
                )
            if progress:
                progress(min(start + batch_size, len(order)), len(order))
    finally:
        if was_training:
            model.train()
    return [r for r in results if r is not None]


# ------------------------------------------------------------------------------------------ backends


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def pick_backend(
    requested: str, *, vllm_present: bool | None = None, cuda: bool | None = None, load_in_4bit: bool = False
) -> str:
    """'hf' or 'vllm' for `generation.backend` (auto, hf, vllm); raises GenerationError for an impossible request."""
    if requested not in ("auto", "hf", "vllm"):
        raise GenerationError(f"generation.backend={requested!r}: use auto, hf or vllm")
    if requested == "hf":
        return "hf"
    vllm_present = vllm_installed() if vllm_present is None else vllm_present
    cuda = cuda_available() if cuda is None else cuda
    if requested == "vllm":
        if not vllm_present:
            raise GenerationError(
                "generation.backend=vllm, but vLLM is not installed: pip install 'thinktune[vllm]' on a machine "
                "with a CUDA GPU, or set generation.backend=hf (transformers, works everywhere)."
            )
        if not cuda:
            raise GenerationError(
                "generation.backend=vllm needs a CUDA GPU and none is visible; set generation.backend=hf "
                "(or auto, which uses vLLM only where it can run)."
            )
        return "vllm"
    if vllm_present and cuda and not load_in_4bit:
        return "vllm"
    return "hf"


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
        from thinktune import kernels

        if kernels.use_lora_kernel("auto", next(model.parameters()).device.type):
            # a mixed batch without PEFT's per-module gather/scatter: ~25% of each decoded token on a CPU
            kernels.fuse_lora_linears(model)
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


class VLLMGenerator:
    """vLLM on a GPU: the base model once, the adapter (if any) as a LoRARequest per call."""

    backend = "vllm"

    def __init__(
        self,
        model_path: str,
        tokenizer: Any,
        *,
        adapter_dir: str | Path | None = None,
        lora_rank: int = 16,
        dtype: str = "auto",
        seed: int = 0,
        max_model_len: int | None = None,
    ) -> None:
        from vllm import LLM

        self.tokenizer = tokenizer
        self.adapter_dir = str(adapter_dir) if adapter_dir else None
        kwargs: dict[str, Any] = {"model": model_path, "dtype": dtype, "seed": seed}
        if self.adapter_dir:
            kwargs.update(enable_lora=True, max_lora_rank=max(8, lora_rank), max_loras=1)
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        log.info("loading %s in vLLM%s", model_path, " with LoRA" if self.adapter_dir else "")
        self.llm = LLM(**kwargs)

    @property
    def has_adapter(self) -> bool:
        return self.adapter_dir is not None

    def __call__(
        self,
        prompts: Sequence[str],
        *,
        adapter: bool,
        eot_id: int,
        prompt_opens_think: bool = False,
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
        seed: int = 0,
        batch_size: int = 8,  # vLLM schedules its own batches
        progress: Callable[[int, int], None] | None = None,
    ) -> list[Generation]:
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest

        if adapter and not self.adapter_dir:
            raise GenerationError("asked for the tuned model's answers, but no adapter is loaded")
        stops = stop_token_ids(self.tokenizer, eot_id)
        params = SamplingParams(
            temperature=temperature,
            top_p=top_p if temperature > 0 else 1.0,
            top_k=-1,  # all tokens (vLLM would otherwise take the model's generation_config top_k)
            repetition_penalty=repetition_penalty,
            max_tokens=max_new_tokens,
            seed=seed if temperature > 0 else None,
            stop_token_ids=stops,
            skip_special_tokens=True,
        )
        # Token ids, not text: vLLM would otherwise tokenize again (and may add a BOS the template already wrote).
        inputs = [
            {"prompt_token_ids": self.tokenizer(p, add_special_tokens=False)["input_ids"]} for p in prompts
        ]
        lora = LoRARequest("tuned", 1, self.adapter_dir) if adapter else None
        outputs = self.llm.generate(inputs, params, lora_request=lora, use_tqdm=False)
        results = []
        for prompt, out in zip(prompts, outputs, strict=True):
            ids = list(out.outputs[0].token_ids)
            if out.outputs[0].finish_reason == "stop" and not (ids and ids[-1] in stops):
                ids.append(stops[0])  # some vLLM versions leave the stop token out of token_ids
            results.append(
                make_generation(
                    self.tokenizer,
                    prompt,
                    ids,
                    stops,
                    max_new_tokens=max_new_tokens,
                    prompt_opens_think=prompt_opens_think,
                )
            )
        if progress:
            progress(len(prompts), len(prompts))
        return results

    def close(self) -> None:
        import gc

        del self.llm
        gc.collect()
