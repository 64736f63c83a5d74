"""The optional vLLM backend: the fast path for generation-heavy evaluation on a CUDA GPU.

The base model loads once in vLLM; the run's adapter is a ``LoRARequest`` per call (no merge). Prompts go in as
the Formatter's token ids (vLLM would otherwise tokenize again and may add a BOS the template already wrote);
results come back as the same :class:`~thinktune.infer.generate.Generation` records as transformers' path, so
eval and compare cannot tell the backends apart. ``generation.backend=auto`` picks vLLM only where it can run.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from thinktune.errors import GenerationError
from thinktune.infer.generate import Generation, make_generation, stop_token_ids

log = logging.getLogger(__name__)


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


#: Why vLLM cannot decode with generation.repetition_penalty_scope=generated, and what to set instead.
PROMPT_COUNTED = (
    "generation.backend=vllm with generation.repetition_penalty_scope=generated: vLLM's repetition penalty always "
    "counts the prompt's tokens; set generation.repetition_penalty_scope=all, or generation.backend=hf "
    "(transformers, which can leave the prompt uncounted)."
)


def pick_backend(
    requested: str,
    *,
    vllm_present: bool | None = None,
    cuda: bool | None = None,
    load_in_4bit: bool = False,
    prompt_free_penalty: bool = False,
) -> str:
    """'hf' or 'vllm' for `generation.backend` (auto, hf, vllm); raises GenerationError for an impossible request.
    `prompt_free_penalty` (a repetition penalty that leaves the prompt uncounted) rules vLLM out: its penalty
    always counts the prompt."""
    if requested not in ("auto", "hf", "vllm"):
        raise GenerationError(f"generation.backend={requested!r}: use auto, hf or vllm")
    if requested == "hf":
        return "hf"
    if prompt_free_penalty:
        if requested == "vllm":
            raise GenerationError(PROMPT_COUNTED)
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
        repetition_penalty_scope: str = "all",
        seed: int = 0,
        batch_size: int = 8,  # vLLM schedules its own batches
        progress: Callable[[int, int], None] | None = None,
    ) -> list[Generation]:
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest

        if adapter and not self.adapter_dir:
            raise GenerationError("asked for the tuned model's answers, but no adapter is loaded")
        if repetition_penalty != 1.0 and repetition_penalty_scope != "all":
            raise GenerationError(PROMPT_COUNTED)
        stops = stop_token_ids(self.tokenizer, eot_id)
        params = SamplingParams(
            temperature=temperature,
            top_p=top_p if temperature > 0 else 1.0,
            top_k=-1,  # all tokens (vLLM would otherwise take the model's generation_config top_k)
            # vLLM's own penalty: unlike the transformers path (generate.penalize_repeats) it also penalises the
            # end-of-turn token, as vLLM takes no per-request logits processor to spare it
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
