"""Batched generation through the one formatter, and splitting outputs into reasoning and answer.

Prompts are left-padded and generated together with the KV cache; each stops at the template's
end-of-turn token. Greedy by default; sampling (e.g. temperature 0.6, top_p 0.95 for R1 models) is seeded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from thinktune.data import THINK_CLOSE, THINK_OPEN

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
    new_tokens: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def split_reasoning(text: str, prompt_opens_think: bool = False) -> tuple[str, str, bool, bool]:
    """Split generated text into (reasoning, answer, think_closed, think_opened).

    Handles a think block opened by the prompt (the text starts inside it), one opened by the model, one never
    closed (all reasoning, no answer), and none at all (all answer).
    """
    body = text
    opened = prompt_opens_think
    if not opened:
        stripped = body.lstrip()
        if stripped.startswith(THINK_OPEN):
            opened = True
            body = stripped[len(THINK_OPEN) :]
        elif THINK_CLOSE in body and THINK_OPEN not in body:
            opened = (
                True  # a model that starts thinking without writing <think> (template-prefilled elsewhere)
            )
    if not opened:
        return "", body.strip(), False, False
    if THINK_CLOSE not in body:
        return body.strip(), "", False, True
    reasoning, answer = body.split(THINK_CLOSE, 1)
    return reasoning.strip(), answer.strip(), True, True


def stop_token_ids(tokenizer: Any, eot_id: int) -> list[int]:
    ids = [eot_id]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


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
) -> list[Generation]:
    """Generate for every prompt (already rendered by the Formatter); results are in input order."""
    import torch

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
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = max(len(encoded[i]) for i in idx)
            input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids = encoded[i]
                input_ids[row, width - len(ids) :] = torch.tensor(ids)
                attention[row, width - len(ids) :] = 1
            if sampling:
                torch.manual_seed(seed + start)
            with torch.no_grad():
                out = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention.to(device),
                    max_new_tokens=max_new_tokens,
                    do_sample=sampling,
                    temperature=temperature if sampling else None,
                    top_p=top_p if sampling else None,
                    top_k=None,
                    repetition_penalty=repetition_penalty,
                    eos_token_id=stops,
                    pad_token_id=pad_id,
                )
            for row, i in enumerate(idx):
                new = out[row, width:].tolist()
                stopped = False
                for j, t in enumerate(new):
                    if t in stops:
                        new, stopped = new[:j], True
                        break
                text = tokenizer.decode(new, skip_special_tokens=True)
                reasoning, answer, closed, opened = split_reasoning(text, prompt_opens_think)
                results[i] = Generation(
                    prompt=prompts[i],
                    text=text,
                    reasoning=reasoning,
                    answer=answer,
                    think_closed=closed,
                    think_opened=opened,
                    stopped=stopped,
                    hit_max_new_tokens=not stopped and len(new) >= max_new_tokens,
                    new_tokens=len(new) + (1 if stopped else 0),
                )
    finally:
        if was_training:
            model.train()
    return [r for r in results if r is not None]
