"""thinktune plan for the reinforcement stage: GRPO's sampling phase (the KV cache of every completion decoded
together, the last position's logits at the full vocabulary, the prompts' prefill), padded prompt + completion
micro-batches, TRL's frozen reference copy; DPO's pairs; recommendations that fit a card; the KV cache term
against the cache transformers actually allocates; the CLI."""

from __future__ import annotations

from dataclasses import replace

from conftest import cli
from thinktune.configfile import load_config
from thinktune.plan.arch import KNOWN_CONFIGS, arch_from_config
from thinktune.plan.memory import GiB, Sampling, Setup, estimate, lora_param_count, sampling_bytes
from thinktune.plan.recommend import check_fits, recommend_rl, setup_from_config

R1_15B = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
R1_7B = "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"


def grpo_cfg(*overrides: str):
    return load_config(None, [f"model.name_or_path={R1_15B}", "data.source=sample:mcq", *overrides])


def test_grpo_setup_follows_the_config():
    cfg = grpo_cfg(
        "train.per_device_train_batch_size=4", "train.gradient_accumulation_steps=8", "grpo.num_generations=8",
        "grpo.max_prompt_length=256", "grpo.max_completion_length=1024",
    )  # fmt: skip
    s = setup_from_config(cfg, stage="grpo")
    assert s.max_length == 256 + 1024 and s.micro_batch == 4 and not s.padding_free
    assert s.sampling == Sampling(
        256, 1024, rows=32, num_generations=8, stage="grpo", reference_adapter=False
    )
    chunked = setup_from_config(grpo_cfg("grpo.sampling_batch_size=8"), stage="grpo")
    assert chunked.sampling.rows == 8
    ref = setup_from_config(grpo_cfg("grpo.beta=0.04", "grpo.init_from=runs/sft"), stage="grpo")
    assert ref.sampling.reference_adapter
    dpo = setup_from_config(grpo_cfg("train.per_device_train_batch_size=2", "dpo.samples=5"), stage="dpo")
    assert dpo.micro_batch == 4 and dpo.sampling.stage == "dpo" and dpo.sampling.rows == 8  # eval.batch_size


def test_the_sampling_phase_counts_the_kv_cache_and_the_logits():
    arch = arch_from_config(KNOWN_CONFIGS[R1_15B], R1_15B)
    sp = Sampling(512, 1024, rows=32, num_generations=8)
    s = Setup(
        max_length=1536,
        micro_batch=4,
        grad_accum=8,
        padding_free=False,
        gradient_checkpointing=True,
        sampling=sp,
    )
    parts = sampling_bytes(arch, s)
    assert parts["kv_cache"] == 2 * arch.num_layers * arch.kv_dim * 2 * 32 * 1536  # bf16 keys and values
    assert parts["logits"] == 3 * 32 * 151936 * 4
    est = estimate(arch, s)
    assert est.peak_phase == "sampling" and est.components["KV cache (sampling)"] == parts["kv_cache"]
    assert sum(est.components.values()) == est.total
    more = estimate(arch, replace(s, sampling=replace(sp, rows=64)))
    longer = estimate(arch, replace(s, sampling=replace(sp, completion_length=2048), max_length=2560))
    assert more.phases["sampling"] > est.phases["sampling"] < longer.phases["sampling"]
    # TRL's frozen copy of a continued adapter (beta > 0) is held through every phase
    ref = estimate(arch, replace(s, sampling=replace(sp, reference_adapter=True)))
    n = lora_param_count(arch, s.lora_r, s.target_modules) * 4
    assert all(ref.phases[k] == est.phases[k] + n for k in est.phases)
    assert ref.components["reference adapter (frozen copy)"] == n
    # DPO samples before training: no optimizer state yet in its sampling phase
    dpo = Setup(max_length=1536, micro_batch=4, padding_free=False, sampling=replace(sp, stage="dpo"))
    assert sampling_bytes(arch, dpo)["total"] < sampling_bytes(arch, replace(dpo, sampling=sp))["total"]


def test_recommendations_for_grpo_on_an_8gb_card():
    arch = arch_from_config(KNOWN_CONFIGS[R1_15B], R1_15B)
    base = setup_from_config(
        grpo_cfg("train.per_device_train_batch_size=4", "train.gradient_accumulation_steps=16",
                 "grpo.max_completion_length=1024"), stage="grpo",
    )  # fmt: skip
    rec = recommend_rl(arch, base, 8 * GiB)
    assert rec.fits and rec.estimate.total <= 8 * GiB
    # 16-bit LoRA with fewer completions decoded at once before a 4-bit base
    assert not rec.setup.qlora and rec.setup.sampling.rows < 64
    assert f"grpo.sampling_batch_size={rec.setup.sampling.rows}" in rec.overrides
    assert rec.setup.micro_batch * rec.setup.grad_accum == 64  # 8 prompts x 8 generations per step, kept
    assert "grpo.num_generations=8" in rec.overrides and "grpo.max_completion_length=1024" in rec.overrides
    arch7 = arch_from_config(KNOWN_CONFIGS[R1_7B], R1_7B)
    rec7 = recommend_rl(arch7, base, 8 * GiB)
    assert rec7.fits and rec7.setup.qlora and "model.load_in_4bit=true" in rec7.overrides
    none = recommend_rl(arch7, base, 3 * GiB)
    assert not none.fits and "nothing fits" in none.reasons[0]


def test_grpo_checks_the_plan_before_loading_weights():
    fits, est, rec = check_fits(grpo_cfg("grpo.max_completion_length=4096"), 8 * GiB, stage="grpo")
    assert not fits and est.setup.sampling is not None and rec.fits
    fits, _, _ = check_fits(grpo_cfg(), 80 * GiB, stage="grpo")
    assert fits


def test_the_kv_cache_term_matches_the_cache_transformers_allocates(tiny_qwen2_dir):
    """The cache of `rows` sequences after prefill and decoding, as the plan counts it (fp32 on a CPU)."""
    import torch
    from transformers import AutoModelForCausalLM, DynamicCache

    from thinktune.plan.arch import load_arch

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir, dtype=torch.float32).eval()
    arch, _ = load_arch(str(tiny_qwen2_dir))
    rows, prompt, steps = 6, 20, 9
    cache = DynamicCache()
    with torch.no_grad():
        out = model(input_ids=torch.randint(0, 1000, (rows, prompt)), past_key_values=cache, use_cache=True)
        for _ in range(steps):
            out = model(input_ids=out.logits[:, -1:].argmax(-1), past_key_values=cache, use_cache=True)
    allocated = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    setup = Setup(max_length=prompt + steps, precision="fp32", device="cpu", padding_free=False,
                  sampling=Sampling(prompt, steps, rows=rows))  # fmt: skip
    assert sampling_bytes(arch, setup)["kv_cache"] == allocated


def test_cli_plan_for_grpo_prints_the_sampling_phase_and_overrides():
    out = cli("plan", "grpo-r1-distill-qwen-1.5b", "--stage", "grpo", "--vram", "8GB")
    assert out.returncode == 0, out.stderr
    for text in (
        "GRPO, LoRA (bf16 base)",
        "KV cache (sampling)",
        "sampling logits",
        "peak phase",
        "sampled together",
    ):
        assert text in out.stdout, text
    assert "grpo.num_generations=" in out.stdout and "train.gradient_accumulation_steps=" in out.stdout
    assert "thinktune grpo RUN_DIR CONFIG.yaml" in out.stdout
