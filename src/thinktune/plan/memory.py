"""The memory model behind `thinktune plan`: peak training memory of a LoRA/QLoRA step, by component.

Everything is computed from a model's config.json shapes (:class:`thinktune.plan.arch.Arch`) and a
:class:`Setup`; nothing is loaded. :mod:`thinktune.plan.recommend` builds on it (recommendations, the train-side check).

What is counted, per component (bytes):

- weights: every parameter at the weight precision, or for QLoRA the blocks' linear layers in 4-bit NF4 with
  double quantization (0.5 byte per weight, one uint8 absmax per 64 weights, one fp32 absmax per 256 blocks,
  per-tensor code tables) while embeddings, lm_head, norms and biases stay 16-bit;
- LoRA adapters, their gradients and the optimizer state, from the exact adapter shapes (r x (in + out) per
  targeted module, grouped-query attention included). PEFT keeps adapters in fp32 next to a 16-bit base; TRL
  casts QLoRA adapters to bf16; AdamW keeps two states in the adapter dtype, 8-bit AdamW one byte each;
- activations: the tensors autograd saves for a LoRA backward through a Llama/Qwen2/Qwen3 block with SDPA,
  counted the way PyTorch keeps them (see :func:`_layer_saved`); with gradient checkpointing only each layer's
  input plus one layer's recompute;
- logits and loss: TRL's chunked LM head (never builds the logits; the default of `SFTTrainer`) or, with
  ``loss="full"``, the full-vocabulary path (logits, their fp32 copy and log-softmax, 12 bytes per token per
  vocabulary entry at the backward peak: the largest term at long lengths with a 152k vocabulary);
- transients: one layer's forward/backward temporaries, the QLoRA dequantized weight, optimizer temporaries;
- runtime: the CUDA context (not visible to PyTorch's allocator) and allocator fragmentation;
- the reinforcement stage (GRPO, DPO; :class:`Sampling`): a sampling phase with the KV cache of every sequence
  decoded together, the last position's logits at the full vocabulary (152k for Qwen) and the prompts' prefill;
  padded micro-batches of prompt + completion; TRL's frozen copy of a continued adapter (the reference).

The peak is the maximum over the phases of a step (loss, backbone backward, checkpoint recompute, optimizer
step). The activation model was checked tensor by tensor against autograd's saved tensors, and end to end
against measured peaks (benchmarks/plan_validation.py on CPU, benchmarks/plan_gpu_check.py on a GPU).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from thinktune.errors import PlanError
from thinktune.plan.arch import Arch

GiB = 2**30
#: The CUDA context, cuBLAS/cuDNN handles and kernels: memory a process holds that PyTorch's allocator never sees.
CUDA_CONTEXT_BYTES = GiB // 2
#: Reserved-but-unused memory of the caching allocator (block rounding, freed segments), as a share of the peak.
FRAGMENTATION = 0.10
#: cuBLAS workspaces PyTorch allocates through its caching allocator (one per handle and stream; the forward and
#: autograd's backward thread each get one; up to 32 MiB each on Hopper).
CUBLAS_WORKSPACE_BYTES = 64 * 2**20
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
#: TRL's chunked LM head works on tiles of this many tokens x vocabulary columns (trl.kernels.chunked_logprob).
_TRL_TOKEN_CHUNK, _TRL_VOCAB_CHUNK = 4096, 32768


@dataclass(frozen=True)
class Sampling:
    """The reinforcement stage's sampling, for :class:`Setup`: `rows` sequences of up to `prompt_length` +
    `completion_length` tokens decoded together with a KV cache (GRPO: every completion of an optimizer step at
    once, as TRL generates them; DPO: one batch of the answers sampled before training)."""

    prompt_length: int
    completion_length: int
    rows: int
    num_generations: int = 1
    stage: str = (
        "grpo"  # grpo: sampling between optimizer steps; dpo: before training (no optimizer state yet)
    )
    reference_adapter: bool = False  # TRL's frozen copy of a continued adapter (the KL / DPO reference)


@dataclass(frozen=True)
class Setup:
    """One training configuration to estimate. Built from a :class:`~thinktune.config.Config` by
    :func:`setup_from_config`; the defaults are thinktune's LoRA recipe, so a measurement names only what it
    varies. Tokens per micro-step are ``micro_batch * max_length`` (the worst case)."""

    max_length: int
    micro_batch: int = 1
    grad_accum: int = 1
    precision: str = "bf16"  # bf16 | fp16 | fp32
    qlora: bool = False
    lora_r: int = 16
    target_modules: tuple[str, ...] = ALL_LINEAR
    lora_dropout: float = 0.05
    gradient_checkpointing: bool = False
    optim: str = "adamw_torch"
    padding_free: bool = True
    attention: str = "sdpa"  # sdpa | packed_sdpa (per-example, no mask) | flash_attention_2 | eager
    loss: str = "chunked"  # chunked (TRL's fused LM head) | full (HF loss over materialised logits)
    device: str = "cuda"
    sampling: Sampling | None = None  # GRPO / DPO: the sampling phase, and padded (not packed) micro-batches

    @property
    def tokens(self) -> int:
        return self.micro_batch * self.max_length


@dataclass
class Estimate:
    """Peak memory of one training step by component; `components` add up to `total`."""

    model: str
    setup: Setup
    components: dict[str, int]
    peak_allocated: int  # what torch.cuda.max_memory_allocated would report
    peak_phase: str
    total: int  # peak_allocated + allocator reserve + CUDA context: what the GPU must have
    phases: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["setup"]["tokens"] = self.setup.tokens
        return d


# ------------------------------------------------------------------------------------------ estimation


def lora_param_count(arch: Arch, r: int, targets: tuple[str, ...]) -> int:
    """Exact LoRA parameter count: r x (in + out) per targeted linear layer of every block."""
    shapes = arch.linear_shapes()
    return arch.num_layers * sum(r * (shapes[m][0] + shapes[m][1]) for m in targets)


def weight_bytes(arch: Arch, precision: str, qlora: bool) -> int:
    counts = arch.param_counts()
    if not qlora:
        return arch.total_params * (4 if precision == "fp32" else 2)
    n = counts["linear_weights"]
    tensors = 7 * arch.num_layers
    blocks = math.ceil(n / 64)
    # bitsandbytes NF4, blocksize 64, double quantization: packed 4-bit weights, uint8 absmax per block,
    # fp32 absmax per 256 blocks, and per tensor a 256-entry fp32 code, the 16-entry NF4 code and an offset.
    nf4 = n // 2 + blocks + 4 * math.ceil(blocks / 256) + tensors * (256 * 4 + 16 * 4 + 4)
    return nf4 + 2 * (arch.total_params - n)


def _dtypes(s: Setup) -> tuple[int, int, int, bool, int]:
    """(activation bytes, adapter bytes, bytes of the input copy lora_A saves, whether each LoRA module
    keeps its own input copy, bytes per dropout-mask element)."""
    e = 4 if s.precision == "fp32" else 2
    ad = (
        2 if s.qlora else 4
    )  # PEFT upcasts adapters to fp32 (autocast_adapter_dtype); TRL casts QLoRA ones to bf16
    c = 2 if s.precision != "fp32" else ad  # under autocast, lora_A saves its bf16/fp16 cast of the input
    copies = s.lora_dropout > 0 or ad != e
    # CUDA's fused dropout keeps a bool mask; elsewhere dropout multiplies by a noise tensor in the input's dtype,
    # and PEFT casts the input to the adapter dtype before dropout.
    mask = 1 if s.device == "cuda" else ad
    return e, ad, c, copies, mask


def _attention_layout(s: Setup) -> tuple[bool, int]:
    """(key/value saved at full head count, attention-mask bytes). Flash-attention (and SDPA without a mask)
    keep grouped K/V; a packed or padded micro-batch under SDPA/eager gets a dense mask and repeated K/V."""
    if s.attention in ("flash_attention_2", "packed_sdpa") or s.micro_batch == 1:
        return False, 0
    rows, length = (1, s.tokens) if s.padding_free else (s.micro_batch, s.max_length)
    mask_elem = 1 if s.attention == "sdpa" else (4 if s.precision == "fp32" else 2)
    return True, rows * length * length * mask_elem


def _layer_saved(arch: Arch, s: Setup, input_grad: bool) -> tuple[int, bool]:
    """(bytes autograd keeps for one decoder block's LoRA backward, whether the block's output requires grad).

    Checked against the saved tensors of transformers' Qwen2/Qwen3/Llama blocks: RMSNorm keeps its fp32 input
    and rsqrt, SDPA its q/k/v/output/logsumexp, the SiLU-gated MLP its three intermediate products, each LoRA
    module its input (or its own cast/dropout copy), its dropout mask and lora_A's output. A tensor is only
    saved where a gradient flows: before the first adapter nothing upstream needs one."""
    T, h, i, H = s.tokens, arch.hidden_size, arch.intermediate_size, arch.num_heads
    qd, kvd = arch.q_dim, arch.kv_dim
    e, _, c, copies, mask = _dtypes(s)
    targets = set(s.target_modules)
    repeat_kv, _ = _attention_layout(s)
    if s.attention == "eager":
        repeat_kv = True

    def lora_inputs(width: int, modules: tuple[str, ...], grad_in: bool, already_saved: bool) -> int:
        n = len(targets.intersection(modules))
        if n == 0:
            return 0
        if copies:
            return n * T * width * (c + (mask if s.lora_dropout > 0 and grad_in else 0))
        return 0 if already_saved else T * width * e

    norm = T * h * 4 + T * 4
    total = norm if input_grad else 0
    total += lora_inputs(h, ("q_proj", "k_proj", "v_proj"), input_grad, False)
    qkv_grad = input_grad or bool(targets & {"q_proj", "k_proj", "v_proj"})
    if qkv_grad:
        if arch.qk_norm:
            total += T * (qd + kvd) * 4 + T * (H + arch.num_kv_heads) * 4
        kv_saved = qd if repeat_kv else kvd
        total += T * qd * e + 2 * T * kv_saved * e
        if s.attention == "eager":
            rows, length = (1, T) if s.padding_free else (s.micro_batch, s.max_length)
            total += rows * H * length * length * (4 + e)  # fp32 softmax output and its cast
        else:
            total += T * qd * e + T * H * 4  # output and logsumexp
            if repeat_kv:
                # SDPA turns the shared bool mask into an additive one in the query's dtype, and every
                # layer's backward keeps its own copy.
                rows, length = (1, T) if s.padding_free else (s.micro_batch, s.max_length)
                total += rows * length * length * e
    total += lora_inputs(qd, ("o_proj",), qkv_grad, qkv_grad and s.attention != "eager")
    mid_grad = qkv_grad or "o_proj" in targets
    total += norm if mid_grad else 0
    total += lora_inputs(h, ("gate_proj", "up_proj"), mid_grad, False)
    gate_grad, up_grad = mid_grad or "gate_proj" in targets, mid_grad or "up_proj" in targets
    # SiLU keeps its input (the gate output); the gated product keeps each factor the other's gradient needs.
    total += T * i * e * (2 * gate_grad + up_grad)
    total += lora_inputs(i, ("down_proj",), gate_grad or up_grad, False)
    total += len(targets) * T * s.lora_r * c  # lora_A outputs, saved by lora_B
    return total, gate_grad or up_grad or "down_proj" in targets


def _layer_transient(arch: Arch, s: Setup) -> tuple[int, int]:
    """(forward, backward) temporaries of one block beyond what it saves, at their largest (measured with the
    CPU allocator's event trace: the forward's peak is at down_proj, the backward's stays below it)."""
    T, i = s.tokens, arch.intermediate_size
    e, ad, c, _, _ = _dtypes(s)
    # Forward at down_proj: the gated product (not saved when the adapter keeps its own copy), PEFT's cast of it
    # to the adapter dtype, and the dropout output when autocast then saves a 16-bit cast of it instead.
    fwd = T * i * e + (T * i * 4 if ad != e else 0) + (T * i * ad if s.lora_dropout > 0 and c != ad else 0)
    # Backward: saved tensors are released node by node as gradients appear; one product-sized gradient, plus
    # the fp32 gradient of the LoRA branch under autocast, is what is in flight.
    bwd = T * i * (e + (4 if c != ad else 0))
    extra = 0
    if s.qlora:
        # bitsandbytes dequantizes the whole weight to the compute dtype for long inputs (plus fp32 absmax).
        largest = max(a * b for a, b in arch.linear_shapes().values())
        extra = largest * 2 + 2 * 4 * math.ceil(largest / 64)
    return fwd + extra, bwd + extra


def _loss_bytes(arch: Arch, s: Setup) -> tuple[int, int]:
    """(bytes saved for the loss's backward, peak bytes of the loss path including them)."""
    T, h, V = s.tokens, arch.hidden_size, arch.vocab_size
    e, _, c, _, _ = _dtypes(s)
    if s.loss == "full":
        # log_softmax output (fp32, saved) + at the backward peak its incoming gradient and its result.
        return T * V * 4, T * V * 12
    rows = min(T, _TRL_TOKEN_CHUNK)
    # The kernel's tile buffer is always a full vocabulary chunk wide, even for smaller vocabularies.
    buffer = rows * _TRL_VOCAB_CHUNK * c
    # On CUDA a Triton kernel folds each tile in place. Elsewhere TRL's torch fallback holds 7.25 fp32
    # tile-sized temporaries at its backward's busiest line (trl/kernels/chunked_logprob.py::_backward_tile:
    # y, z, log p, p, grad, the target mask as float, its difference with p, and a bool mask).
    fold = 0 if s.device == "cuda" else 29 * rows * min(V, _TRL_VOCAB_CHUNK)
    saved = T * h * e + 3 * T * 4  # the gathered hidden states and per-token statistics
    # backward: the saved tensors, the fp32 hidden-state gradient and the tile buffer, plus either the fold's
    # temporaries or (after the loop) the gradient cast back to the activation dtype.
    return saved, saved + T * h * 4 + buffer + max(fold, T * h * e if e != 4 else 0)


def _optimizer_bytes(n_lora: int, ad: int, optim: str) -> tuple[int, int]:
    """(persistent state, step temporaries) for the adapter parameters."""
    if "8bit" in optim:
        return n_lora * 2 + 2 * 4 * math.ceil(n_lora / 256), n_lora * 4
    if optim.startswith(("adamw", "adam")) or optim in ("paged_adamw_32bit",):
        return 2 * n_lora * ad, n_lora * ad
    if optim.startswith("sgd"):
        return 0, 0
    # Adafactor, Lion, ... hold no more than AdamW's two states; count AdamW's so the estimate stays safe.
    return 2 * n_lora * ad, n_lora * ad


def saved_bytes(arch: Arch, s: Setup) -> dict[str, int]:
    """What autograd holds for the backward when the forward ends, without checkpointing: every block's saved
    tensors ("layers"), model-level ones ("shared": RoPE cos/sin saved by every block's rotary multiply, the
    final norm's input, with checkpointing the bool attention mask, and under autocast the cached 16-bit
    casts of fp32 adapter weights) and the loss's ("loss")."""
    e, ad, _, _, _ = _dtypes(s)
    _, mask_bytes = _attention_layout(s)
    shared = 2 * s.tokens * arch.head_dim * e + (s.tokens * arch.hidden_size * 4 + s.tokens * 4)
    if s.gradient_checkpointing:
        # The bool mask is an argument of every checkpointed block, kept for the recompute.
        shared += mask_bytes
    if s.precision != "fp32" and ad == 4:
        shared += lora_param_count(arch, s.lora_r, s.target_modules) * 2
    # Without checkpointing the embeddings' output needs no gradient (frozen); with it, TRL and PEFT make it
    # require one so the recomputed first block gets gradients.
    layers, grad = 0, s.gradient_checkpointing
    for _ in range(arch.num_layers):
        n, grad = _layer_saved(arch, s, grad)
        layers += n
    return {"layers": layers, "shared": shared, "loss": _loss_bytes(arch, s)[0]}


def sampling_bytes(arch: Arch, s: Setup) -> dict[str, int]:
    """The sampling phase of GRPO / DPO (empty without :attr:`Setup.sampling`): the weights, the adapter (and,
    for GRPO, its optimizer state), the KV cache of every sequence decoded together, the last position's logits
    and the sampler's fp32 copies of them, and one block's temporaries while the prompts are prefilled. The
    gradients are freed (set to None) between optimizer steps."""
    sp = s.sampling
    if sp is None:
        return {}
    e, ad, _, _, _ = _dtypes(s)
    n_lora = lora_param_count(arch, s.lora_r, s.target_modules)
    opt_state, _ = _optimizer_bytes(n_lora, ad, s.optim)
    tokens = sp.rows * (sp.prompt_length + sp.completion_length)
    kv = 2 * arch.num_layers * arch.kv_dim * e * tokens
    logits = (
        3 * sp.rows * arch.vocab_size * 4
    )  # the last position's logits in fp32, the processed scores, probs
    prefill = sp.rows * sp.prompt_length * (arch.hidden_size * 4 + arch.intermediate_size * 3) * e
    extra = _layer_transient(arch, s)[0] if s.qlora else 0  # the dequantized weight
    workspaces = CUBLAS_WORKSPACE_BYTES if s.device == "cuda" else 0
    state = 0 if sp.stage == "dpo" else opt_state
    total = (
        weight_bytes(arch, s.precision, s.qlora)
        + n_lora * ad
        + state
        + workspaces
        + kv
        + logits
        + prefill
        + extra
    )
    return {"total": total, "kv_cache": kv, "logits": logits}


def estimate(arch: Arch, s: Setup) -> Estimate:
    """Peak memory of one steady-state training step (optimizer state already allocated)."""
    if s.qlora and s.precision == "fp32":
        raise PlanError("QLoRA computes in bf16/fp16: set model.dtype=auto (or bfloat16/float16).")
    unknown = sorted(set(s.target_modules) - set(ALL_LINEAR))
    if unknown:
        raise PlanError(
            f"lora.target_modules {unknown} are not linear layers of a decoder block ({ALL_LINEAR})."
        )
    T, h, L = s.tokens, arch.hidden_size, arch.num_layers
    e, ad, _, _, _ = _dtypes(s)
    n_lora = lora_param_count(arch, s.lora_r, s.target_modules)
    weights = weight_bytes(arch, s.precision, s.qlora)
    opt_state, opt_temp = _optimizer_bytes(n_lora, ad, s.optim)
    adapters, grads = n_lora * ad, n_lora * ad
    # With accumulation, gradients live on through the next micro-step's forward and backward.
    grads_fb = grads if s.grad_accum > 1 else 0
    saved = saved_bytes(arch, s)
    layers_saved, shared = saved["layers"], saved["shared"]
    one_layer = _layer_saved(arch, s, True)[0]
    fwd_t, bwd_t = _layer_transient(arch, s)
    _, loss_peak = _loss_bytes(arch, s)
    workspaces = CUBLAS_WORKSPACE_BYTES if s.device == "cuda" else 0
    static = weights + adapters + opt_state + grads_fb + workspaces
    incoming = T * h * 4  # the gradient arriving at a block (fp32 at most)
    if s.gradient_checkpointing:
        ckpt_inputs = L * T * h * e  # each block's input, kept to recompute it
        phases = {
            "loss": static + ckpt_inputs + shared + loss_peak,
            "layer recompute": static
            + grads
            + ckpt_inputs
            + shared
            + one_layer
            + max(fwd_t, bwd_t)
            + incoming,
        }
        acts = ckpt_inputs + shared
    else:
        phases = {
            "last-layer forward": static + layers_saved + shared + fwd_t,
            "loss": static + layers_saved + shared + loss_peak,
            "last-layer backward": static + grads + layers_saved + shared + bwd_t + incoming,
        }
        acts = layers_saved + shared
    phases["optimizer step"] = weights + adapters + grads + opt_state + opt_temp + workspaces
    sampled = sampling_bytes(arch, s)
    if sampled:
        phases["sampling"] = sampled["total"]
        if s.sampling is not None and s.sampling.reference_adapter:
            for k in phases:
                phases[k] += n_lora * ad  # TRL's frozen reference copy of the adapter lives all along
    peak_phase = max(phases, key=phases.__getitem__)
    peak = phases[peak_phase]
    runtime = CUDA_CONTEXT_BYTES if s.device == "cuda" else 0
    reserve = int(peak * FRAGMENTATION) if s.device == "cuda" else 0
    in_phase_grads = grads_fb if peak_phase in ("loss", "last-layer forward") else grads
    components = {
        "weights": weights,
        "LoRA adapters": adapters,
        "LoRA gradients": in_phase_grads,
        "optimizer state": opt_state,
        "kernel workspaces": workspaces,
        "activations (saved for backward)": acts if peak_phase != "optimizer step" else 0,
    }
    components["logits & loss" if s.loss == "full" else "LM head & loss (chunked)"] = (
        loss_peak if peak_phase == "loss" else 0
    )
    if sampled:
        components["reference adapter (frozen copy)"] = n_lora * ad if s.sampling.reference_adapter else 0
        on = peak_phase == "sampling"
        components["KV cache (sampling)"] = sampled["kv_cache"] if on else 0
        components["sampling logits"] = sampled["logits"] if on else 0
        if on:
            components["activations (saved for backward)"] = 0
            components["LoRA gradients"] = 0
            if s.sampling.stage == "dpo":
                components["optimizer state"] = 0
    rest = peak - sum(components.values())
    components["recompute & temporaries"] = rest
    components["CUDA context"] = runtime
    components["allocator reserve"] = reserve
    notes = []
    if sampled:
        sp = s.sampling
        notes.append(
            f"sampling: {sp.rows} sequences of up to {sp.prompt_length}+{sp.completion_length} tokens decoded together "
            f"(KV cache {sampled['kv_cache'] / GiB:.2f} GiB); the training micro-batches are padded to the longest "
            "prompt and completion (not packed)."
        )
    _, mask_bytes = _attention_layout(s)
    if s.device == "cuda" and s.attention == "sdpa" and mask_bytes:
        notes.append(
            f"SDPA with {'packed' if s.padding_free else 'padded'} micro-batches builds a "
            f"{mask_bytes / GiB:.2f} GiB attention mask, keeps a copy of it in the activation dtype per layer and repeats K/V per "
            "head; flash-attention avoids all three (or use micro-batch 1 with more accumulation)."
        )
    return Estimate(
        model=arch.name,
        setup=s,
        components=components,
        peak_allocated=peak,
        peak_phase=peak_phase,
        total=peak + reserve + runtime,
        phases=phases,
        notes=notes,
    )
