"""Open a run folder (or a model + optional adapter) for inference: config, tokenizer, formatter, model, generator.

Used by `thinktune eval` and `thinktune compare`. For a run folder everything comes from its files: the
resolved config, the tokenizer saved beside the adapter (with the exact chat template used in training) and
the formatter settings, so the base and the tuned model are prompted exactly as in training. The model is
loaded once; the base model's answers come from the same weights with the adapter switched off.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thinktune.config import Config, ConfigError, load_config, parse_override, validate
from thinktune.data import Example
from thinktune.formatting import Formatter
from thinktune.generate import GenerationError, HFGenerator, VLLMGenerator, pick_backend
from thinktune.rundir import RunDir

log = logging.getLogger(__name__)

#: Settings that may be changed when evaluating a finished run; the rest would prompt differently from training.
RUN_OVERRIDABLE = ("generation.", "eval.", "model.dtype", "model.attn_implementation", "model.load_in_4bit")


@dataclass
class Session:
    cfg: Config
    tokenizer: Any
    formatter: Formatter
    model_name: str  # the base model as configured (hub id, folder, pkg: alias)
    adapter_dir: Path | None
    run: RunDir | None = None
    _model: Any = field(default=None, repr=False)
    _generator: Any = field(default=None, repr=False)

    # ------------------------------------------------------------------ loading

    def model(self) -> Any:
        """The transformers model (with the adapter when there is one), loaded once."""
        if self._model is None:
            self._model = load_model_for_inference(self.cfg, self.adapter_dir)
        return self._model

    def release_model(self) -> None:
        """Free the transformers model (before vLLM takes the GPU)."""
        if self._model is None:
            return
        import gc

        import torch

        self._model = None
        if isinstance(self._generator, HFGenerator):
            self._generator = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def backend(self) -> str:
        from thinktune.modeling import resolve_source

        _, gguf = resolve_source(self.model_name, self.cfg.model.gguf_file)
        requested = self.cfg.generation.backend
        if gguf and requested == "vllm":
            raise GenerationError(
                f"generation.backend=vllm cannot load the GGUF model {self.model_name!r}; use generation.backend=hf"
            )
        if gguf:
            return "hf"
        return pick_backend(requested, load_in_4bit=self.cfg.model.load_in_4bit)

    def generator(self) -> HFGenerator | VLLMGenerator:
        if self._generator is None:
            if self.backend() == "vllm":
                from thinktune.modeling import resolve_source

                self.release_model()
                source, _ = resolve_source(self.model_name, None)
                self._generator = VLLMGenerator(
                    source,
                    self.tokenizer,
                    adapter_dir=self.adapter_dir,
                    lora_rank=self.cfg.lora.r,
                    seed=self.cfg.generation.seed,
                )
            else:
                self._generator = HFGenerator(self.model(), self.tokenizer)
        return self._generator

    # ------------------------------------------------------------------ prompting

    def decoding(self) -> dict[str, Any]:
        """Generation settings shared by every call, so base and tuned decode identically."""
        g = self.cfg.generation
        return {
            "eot_id": self.formatter.eot_id,
            "prompt_opens_think": self.formatter.prompt_opens_think,
            "max_new_tokens": g.max_new_tokens,
            "temperature": g.temperature,
            "top_p": g.top_p,
            "repetition_penalty": g.repetition_penalty,
            "seed": g.seed,
            "batch_size": self.cfg.eval.batch_size,
        }

    def decoding_summary(self) -> dict[str, Any]:
        d = {k: v for k, v in self.decoding().items() if k not in ("eot_id",)}
        return {**d, "backend": self.backend(), "end_of_turn": self.formatter.eot}

    def generate(self, prompts: list[str], *, adapter: bool, label: str = "") -> list[Any]:
        if not prompts:
            return []

        def progress(done: int, total: int) -> None:
            log.info("%s: generated %d/%d", label or ("tuned" if adapter else "base"), done, total)

        return self.generator()(prompts, adapter=adapter, progress=progress, **self.decoding())

    def generate_both(self, prompts: list[str]) -> tuple[list[Any], list[Any]]:
        """(base, tuned) answers with the same decoding: one mixed pass where the backend can, else two."""
        if prompts:
            generator = self.generator()
            both = getattr(generator, "both", None)
            pair = both(prompts, **self.decoding()) if both is not None else None
            if pair is not None:
                log.info("base and tuned: generated %d/%d in mixed batches", len(prompts), len(prompts))
                return pair
        return (
            self.generate(prompts, adapter=False, label="base"),
            self.generate(prompts, adapter=True, label="tuned"),
        )

    def validation_examples(self, limit: int | None) -> list[Example]:
        if self.run is None or not self.run.validation_data.is_file():
            return []
        examples = self.run.examples("validation")
        return examples[:limit] if limit is not None else examples


def _check_run_overrides(overrides: list[str]) -> None:
    for text in overrides:
        key, _ = parse_override(text)
        if not key.startswith(RUN_OVERRIDABLE):
            raise ConfigError(
                f"{key!r} cannot be changed when evaluating a run: it would prompt the model differently from "
                f"training. Allowed: generation.*, eval.*, model.dtype, model.attn_implementation, "
                "model.load_in_4bit."
            )


def open_run(run_dir: str | Path, overrides: list[str] | None = None, *, adapter: bool = True) -> Session:
    """A run folder: its config (plus generation/eval overrides), tokenizer, formatter and adapter."""
    run = RunDir.open(run_dir)
    overrides = list(overrides or [])
    _check_run_overrides(overrides)
    cfg = validate(load_config(run.config_file, overrides), need_data=False)
    pick_backend(
        cfg.generation.backend, load_in_4bit=cfg.model.load_in_4bit
    )  # an impossible request fails now
    adapter_dir = run.adapter if adapter else None
    if adapter_dir is not None and not (adapter_dir / "adapter_config.json").is_file():
        raise GenerationError(
            f"{adapter_dir} holds no PEFT adapter (no adapter_config.json): has `thinktune train` finished "
            "writing this run? Evaluate the base model with --base meanwhile."
        )
    tok = run.tokenizer()
    return Session(cfg, tok, run.formatter(tok), cfg.model.name_or_path, adapter_dir, run)


def open_model(
    model: str,
    adapter: str | Path | None = None,
    *,
    config_path: str | None = None,
    overrides: list[str] | None = None,
) -> Session:
    """A model (hub id, folder, .gguf, pkg: alias) and optionally a PEFT adapter folder, outside any run."""
    from thinktune.modeling import load_tokenizer

    cfg = load_config(config_path, [*(overrides or []), f"model.name_or_path={model}"])
    validate(cfg, need_data=False)
    pick_backend(cfg.generation.backend, load_in_4bit=cfg.model.load_in_4bit)
    adapter_dir = Path(adapter) if adapter else None
    if adapter_dir is not None:
        if not (adapter_dir / "adapter_config.json").is_file():
            raise GenerationError(f"{adapter_dir} is not a PEFT adapter folder (no adapter_config.json).")
        if (adapter_dir / "tokenizer_config.json").is_file():
            # The tokenizer saved with the adapter carries the chat template the adapter was trained with.
            cfg.model.tokenizer = str(adapter_dir)
            cfg.model.chat_template = None
    tok = load_tokenizer(cfg.model)
    d = cfg.data
    fmt = Formatter(tok, reasoning=d.reasoning, system_prompt=d.system_prompt, text_template=d.text_template)
    return Session(cfg, tok, fmt, cfg.model.name_or_path, adapter_dir, None)


def load_model_for_inference(cfg: Config, adapter_dir: Path | None) -> Any:
    """The base model in inference precision (4-bit when the run trained with QLoRA on a GPU) + the adapter."""
    from thinktune.modeling import default_device, load_adapter, load_model

    device = default_device()
    extra: dict[str, Any] = {}
    if cfg.model.load_in_4bit:
        if device.startswith("cuda"):
            import torch
            from transformers import BitsAndBytesConfig

            extra["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16,
            )
            extra["device_map"] = {"": 0}
        else:
            log.warning(
                "model.load_in_4bit needs CUDA; loading the base in full precision on the CPU instead"
            )
    model = load_model(cfg.model, device=device, **extra)
    if adapter_dir is not None:
        model = load_adapter(model, adapter_dir)
    model.eval()
    return model
