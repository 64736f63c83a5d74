"""thinktune.kernels: the one-pass LM head gives TRL's loss and gradients, and shared LoRA dropout drops what
it should, shares only between projections that read the same tensor, and forgets inputs that are gone."""

from __future__ import annotations

import gc

import pytest
import torch
from torch import nn

from _train_helpers import arithmetic_rows, quick_config, single_thread
from thinktune.data.schemas import Example
from thinktune.formatting.formatter import Formatter
from thinktune.models.fastpath import decoding, lora, loss_head
from thinktune.models.loading import load_model, load_tokenizer
from thinktune.models.precision import resolve_precision
from thinktune.rundir import RunDir
from thinktune.train.trainer import build_trainer

FP32 = resolve_precision("float32", "cpu")


@pytest.fixture(autouse=True)
def _one_thread():
    with single_thread():
        yield


# ------------------------------------------------------------------------------------------ one-pass head


def test_onepass_logprob_matches_log_softmax_values_and_gradient():
    gen = torch.Generator().manual_seed(0)
    n, h, v = loss_head.TILE * 2 + 37, 24, 300  # three tiles, the last one partial
    hidden = torch.randn(n, h, dtype=torch.float64, generator=gen, requires_grad=True)
    weight = torch.randn(v, h, dtype=torch.float64, generator=gen)
    targets = torch.randint(0, v, (n,), generator=gen)
    upstream = torch.randn(n, dtype=torch.float64, generator=gen)

    logp, entropy, top1 = loss_head.OnePassLogProb.apply(hidden, weight, targets)
    (logp * upstream).sum().backward()

    ref_hidden = hidden.detach().clone().requires_grad_()
    log_sm = torch.log_softmax(ref_hidden @ weight.t(), -1)
    ref = log_sm.gather(-1, targets[:, None])[:, 0]
    (ref * upstream).sum().backward()

    assert torch.allclose(logp, ref.detach(), atol=1e-12)
    assert torch.allclose(hidden.grad, ref_hidden.grad, atol=1e-12)
    assert torch.allclose(entropy, -(log_sm.exp() * log_sm).sum(-1).detach(), atol=1e-12)
    assert torch.equal(top1, log_sm.argmax(-1) == targets)
    assert not entropy.requires_grad and not top1.requires_grad


def test_onepass_logprob_at_a_temperature_matches_log_softmax_of_scaled_logits():
    gen = torch.Generator().manual_seed(3)
    n, h, v, t = 70, 16, 90, 0.7
    hidden = torch.randn(n, h, dtype=torch.float64, generator=gen, requires_grad=True)
    weight = torch.randn(v, h, dtype=torch.float64, generator=gen)
    targets = torch.randint(0, v, (n,), generator=gen)
    logp, entropy, _ = loss_head.OnePassLogProb.apply(hidden, weight, targets, t)
    logp.sum().backward()
    ref_hidden = hidden.detach().clone().requires_grad_()
    log_sm = torch.log_softmax(ref_hidden @ weight.t() / t, -1)
    log_sm.gather(-1, targets[:, None]).sum().backward()
    assert torch.allclose(logp, log_sm.gather(-1, targets[:, None])[:, 0].detach(), atol=1e-12)
    assert torch.allclose(hidden.grad, ref_hidden.grad, atol=1e-12)
    assert torch.allclose(entropy, -(log_sm.exp() * log_sm).sum(-1).detach(), atol=1e-12)


def test_onepass_head_gives_trls_grpo_loss_and_gradients(tmp_path, tiny_qwen2_dir):
    """GRPO scores completions through the same head: at the sampling temperature, only the completion tokens."""
    from thinktune.configfile import load_config
    from thinktune.formatting.formatter import Formatter
    from thinktune.train.grpo import build_grpo_trainer
    from thinktune.train.trainer import lora_config

    def grpo_trainer(where, head):
        cfg = load_config(None, [
            f"model.name_or_path={tiny_qwen2_dir}", "data.source=sample:mcq", f"train.loss_head={head}",
            "lora.lora_dropout=0", "train.per_device_train_batch_size=2", "train.gradient_accumulation_steps=1",
            "grpo.num_generations=2", "grpo.temperature=0.7",
        ])  # fmt: skip
        tok = load_tokenizer(cfg.model)
        torch.manual_seed(0)
        model = load_model(cfg.model, device="cpu", precision=FP32, attention="sdpa")
        run = RunDir(where)
        run.path.mkdir(parents=True)
        trainer, _ = build_grpo_trainer(
            cfg, model, lora_config(cfg, model), Formatter(tok), [], run, device="cpu", precision=FP32
        )
        gen = torch.Generator().manual_seed(1)
        for name, p in trainer.model.named_parameters():
            if "lora_B" in name:
                p.data.copy_(torch.randn(p.shape, generator=gen) * 0.05)
        return trainer

    gen = torch.Generator().manual_seed(2)
    completion_mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    inputs = {
        "prompt_ids": torch.randint(0, 1000, (2, 5), generator=gen),
        "prompt_mask": torch.tensor([[1] * 5, [0, 1, 1, 1, 1]]),
        "completion_ids": torch.randint(0, 1000, (2, 7), generator=gen),
        "completion_mask": completion_mask,
        "advantages": torch.tensor([1.0, -0.5]),
        "num_items_in_batch": completion_mask.sum(),
    }
    results = {}
    for head in ("onepass", "trl"):
        trainer = grpo_trainer(tmp_path / head, head)
        trainer.current_gradient_accumulation_steps = 1  # set by the training loop, which this test skips
        trainer.model.train()
        loss = trainer.compute_loss(trainer.model, dict(inputs))
        loss.backward()
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
        results[head] = (loss.item(), grads, trainer._metrics["train"]["entropy"][-1])
    (loss, grads, entropy), (ref_loss, ref_grads, ref_entropy) = results["onepass"], results["trl"]
    assert loss == pytest.approx(ref_loss, rel=1e-5, abs=1e-7) and entropy == pytest.approx(
        ref_entropy, rel=1e-5
    )
    assert grads.keys() == ref_grads.keys() and len(grads) > 0
    for name, g in grads.items():
        assert torch.allclose(g, ref_grads[name], rtol=1e-4, atol=1e-7), name


def test_onepass_logprob_without_grad_and_without_tokens():
    weight = torch.randn(50, 8)
    with torch.no_grad():
        logp, _, _ = loss_head.OnePassLogProb.apply(
            torch.randn(5, 8), weight, torch.zeros(5, dtype=torch.long)
        )
    assert logp.shape == (5,) and bool((logp <= 0).all())
    empty = torch.zeros(0, 8, requires_grad=True)
    logp, entropy, top1 = loss_head.OnePassLogProb.apply(empty, weight, torch.zeros(0, dtype=torch.long))
    assert logp.shape == entropy.shape == top1.shape == (0,)
    logp.sum().backward()
    assert empty.grad is not None and empty.grad.shape == (0, 8)


def _trainer(tmp_path, model_dir, *overrides):
    cfg = quick_config(
        tmp_path, model_dir, "lora.lora_dropout=0.0", "train.per_device_train_batch_size=3", *overrides
    )
    tok = load_tokenizer(cfg.model)
    fmt = Formatter(tok)
    enc = [fmt.encode(Example(r["Question"], r["Complex_CoT"], r["Response"])) for r in arithmetic_rows(3)]
    torch.manual_seed(0)
    model = load_model(cfg.model, device="cpu", precision=FP32, attention="sdpa")
    run = RunDir(tmp_path / "run")
    run.path.mkdir(parents=True)
    trainer, _ = build_trainer(cfg, model, tok, enc, [], run, device="cpu", precision=FP32)
    gen = torch.Generator().manual_seed(1)
    for name, p in trainer.model.named_parameters():
        if "lora_B" in name:  # PEFT starts B at zero; a non-zero adapter makes the gradients of A count too
            p.data.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    return trainer, batch


def _loss_and_grads(trainer, batch):
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    return loss.item(), grads


def test_onepass_head_gives_trls_loss_and_gradients(tmp_path, tiny_qwen2_dir):
    fast, batch = _trainer(tmp_path / "a", tiny_qwen2_dir, "train.loss_head=onepass")
    ref, ref_batch = _trainer(tmp_path / "b", tiny_qwen2_dir, "train.loss_head=trl")
    assert torch.equal(batch["input_ids"], ref_batch["input_ids"])
    loss, grads = _loss_and_grads(fast, batch)
    ref_loss, ref_grads = _loss_and_grads(ref, ref_batch)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert grads.keys() == ref_grads.keys() and len(grads) > 0
    for name, g in grads.items():
        assert torch.allclose(g, ref_grads[name], rtol=1e-4, atol=1e-6), name
    # the metrics TRL logs from the head's outputs agree too
    for key in ("entropy", "mean_token_accuracy"):
        assert fast._metrics["train"][key][-1] == pytest.approx(ref._metrics["train"][key][-1], rel=1e-4)


def test_onepass_head_defers_to_trl_where_it_would_not_be_exact(tmp_path, tiny_qwen2_dir, monkeypatch):
    torch.manual_seed(0)
    cfg = quick_config(tmp_path, tiny_qwen2_dir)
    model = load_model(cfg.model, device="cpu", precision=FP32, attention="sdpa")
    model.config.final_logit_softcapping = 30.0
    assert not loss_head.install_onepass_head(model)  # a soft-capped head: TRL's path, untouched
    model.config.final_logit_softcapping = None
    from trl.trainer.utils import add_fused_lm_head

    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    assert loss_head.install_onepass_head(model)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    labels = torch.tensor([[-100, -100, 7, 8, 9]])
    out = model(input_ids=ids, labels=labels, fused_lm_head=True)
    model.get_output_embeddings().weight.requires_grad_(True)  # a trained head: TRL computes its gradient

    def refuse(*_a, **_k):
        raise AssertionError("the one-pass head must not serve a trained head")

    monkeypatch.setattr(loss_head.OnePassLogProb, "apply", refuse)
    trl_out = model(input_ids=ids, labels=labels, fused_lm_head=True)
    assert trl_out.loss.item() == pytest.approx(out.loss.item(), rel=1e-5)


def test_onepass_head_outputs_match_trls_at_a_temperature(tmp_path, tiny_qwen2_dir):
    # every output TRL's trainers read (DPO logs the vocabulary-mean logit; GRPO scores at its temperature)
    from trl.trainer.utils import add_fused_lm_head

    torch.manual_seed(0)
    cfg = quick_config(tmp_path, tiny_qwen2_dir)
    model = load_model(cfg.model, device="cpu", precision=FP32, attention="sdpa")
    model.get_output_embeddings().weight.requires_grad_(False)
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"), temperature=0.7)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]])
    labels = torch.tensor([[-100, -100, 7, 8, 9, 10], [-100, 12, 13, 14, -100, -100]])
    ref = model(input_ids=ids, labels=labels, fused_lm_head=True)
    assert loss_head.install_onepass_head(model, temperature=0.7)
    out = model(input_ids=ids, labels=labels, fused_lm_head=True)
    mask = ref.label_mask
    for key in ("log_probs", "entropy", "mean_logits"):
        got, want = getattr(out, key), getattr(ref, key)
        assert got is not None, key
        assert torch.allclose(got[mask], want[mask], rtol=1e-4, atol=1e-5), key
    assert torch.equal(out.is_top1[mask], ref.is_top1[mask])


def test_loss_head_auto_is_onepass_off_triton_devices():
    assert loss_head.use_onepass_head("auto", "cpu")
    assert not loss_head.use_onepass_head("auto", "cuda:0")
    assert loss_head.use_onepass_head("onepass", "cuda:0")
    assert not loss_head.use_onepass_head("trl", "cpu")


# ------------------------------------------------------------------------------------------ dropout


def test_cpu_dropout_rate_scale_and_gradient():
    x = torch.randn(1000, 4000, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(0)
    y = lora.dropout(x, 0.05)
    dropped = (y == 0).double().mean().item()
    assert dropped == pytest.approx(0.05, abs=1e-3)
    kept = y != 0
    scale = 65536 / (65536 - round(0.05 * 65536))
    assert torch.allclose(y[kept], x.detach()[kept] * scale)
    y.sum().backward()
    assert torch.equal(x.grad, kept.double() * scale)
    torch.manual_seed(0)
    again = lora.dropout(x.detach(), 0.05)
    assert torch.equal(again, y.detach())  # seeded like every other torch random op


def test_shared_dropout_shares_only_the_same_unchanged_input():
    memo = lora._Memo()
    q, k = lora.SharedDropout(0.5, memo), lora.SharedDropout(0.5, memo)
    x = torch.randn(64, 64)
    first = q(x)
    assert k(x) is first  # same tensor: same dropped copy
    other = torch.randn(64, 64)
    assert not torch.equal(k(other) == 0, first == 0)
    x.mul_(2)  # changed in place: a new mask
    assert not torch.equal(q(x) == 0, first == 0)
    q.eval()
    assert q(x) is x


def test_shared_dropout_forgets_an_input_that_is_gone():
    memo = lora._Memo()
    drop = lora.SharedDropout(0.1, memo)
    x = torch.randn(8, 8)
    drop(x)
    assert memo.output is not None
    del x
    gc.collect()
    assert memo.output is None and memo.key is None


def test_share_lora_dropout_replaces_every_peft_dropout(tmp_path, tiny_qwen2_dir):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = load_model(
        quick_config(tmp_path, tiny_qwen2_dir).model,
        device="cpu",
        precision=FP32,
        attention="sdpa",
    )
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_dropout=0.1, target_modules="all-linear"))
    layers = model.config.num_hidden_layers
    assert lora.share_lora_dropout(peft_model) == 7 * layers
    drops = [m for m in peft_model.modules() if isinstance(m, nn.Dropout)]
    assert drops and all(isinstance(m, lora.SharedDropout) for m in drops)
    memos = {id(m._memo) for m in drops}
    assert len(memos) == 1  # one memo per model
    peft_model.train()
    out = peft_model(input_ids=torch.tensor([[5, 6, 7, 8]]), labels=torch.tensor([[5, 6, 7, 8]]))
    out.loss.backward()
    assert all(p.grad is not None for n, p in peft_model.named_parameters() if "lora_A" in n)


# ------------------------------------------------------------------------------------------ one-node LoRA


@pytest.mark.parametrize("with_dropout", [False, True])
def test_lora_linear_matches_peft_arithmetic(with_dropout):
    gen = torch.Generator().manual_seed(0)
    f64 = {"dtype": torch.float64}
    x = torch.randn(2, 5, 6, generator=gen, **f64).requires_grad_()
    weight, bias = torch.randn(7, 6, generator=gen, **f64), torch.randn(7, generator=gen, **f64)
    a = torch.randn(3, 6, generator=gen, **f64).requires_grad_()
    b = torch.randn(7, 3, generator=gen, **f64).requires_grad_()
    keep = (torch.rand(2, 5, 6, generator=gen) > 0.3).double()
    upstream = torch.randn(2, 5, 7, generator=gen, **f64)

    def grads(y):
        return torch.autograd.grad((y * upstream).sum(), (x, a, b), retain_graph=True)

    dropped = x * keep / 0.7 if with_dropout else None
    out = lora.LoraLinear.apply(x, dropped, weight, bias, a, b, 2.5)
    d = dropped if with_dropout else x
    ref = nn.functional.linear(x, weight, bias) + nn.functional.linear(nn.functional.linear(d, a), b) * 2.5
    assert torch.allclose(out, ref, atol=1e-12)
    for got, want in zip(grads(out), grads(ref), strict=True):
        assert torch.allclose(got, want, atol=1e-12)
    free = torch.randn(2, 5, 6, generator=gen, **f64).requires_grad_()  # a dropped input as its own leaf
    assert torch.autograd.gradcheck(
        lambda xx, dd, aa, bb: lora.LoraLinear.apply(
            xx, dd if with_dropout else None, weight, None, aa, bb, 0.5
        ),
        (x, free, a, b),
    )


def _peft_tiny(tmp_path, model_dir, **lora):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = load_model(
        quick_config(tmp_path, model_dir).model, device="cpu", precision=FP32, attention="sdpa"
    )
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", **lora))
    gen = torch.Generator().manual_seed(1)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:  # PEFT starts B at zero; a non-zero adapter makes every path count
            p.data.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return peft_model


def test_fused_lora_gives_peft_loss_and_gradients_in_training(tmp_path, tiny_qwen2_dir):
    fast, batch = _trainer(tmp_path / "a", tiny_qwen2_dir, "lora.lora_dropout=0.1", "train.lora_kernel=fused")
    ref, ref_batch = _trainer(
        tmp_path / "b", tiny_qwen2_dir, "lora.lora_dropout=0.1", "train.lora_kernel=peft"
    )
    layers = fast.model.get_base_model().config.num_hidden_layers
    patched = [m for m in fast.model.modules() if "forward" in vars(m) and hasattr(m, "lora_A")]
    assert len(patched) == 7 * layers
    assert not [m for m in ref.model.modules() if "forward" in vars(m) and hasattr(m, "lora_A")]
    torch.manual_seed(5)  # the same dropout masks: both paths draw them through the same modules, in order
    loss, grads = _loss_and_grads(fast, batch)
    torch.manual_seed(5)
    ref_loss, ref_grads = _loss_and_grads(ref, ref_batch)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert grads.keys() == ref_grads.keys() and len(grads) == 14 * layers
    for name, g in grads.items():
        assert torch.allclose(g, ref_grads[name], rtol=1e-4, atol=1e-6), name


def test_fused_lora_falls_back_to_peft_where_it_does_not_apply(tmp_path, tiny_qwen2_dir):
    ids = torch.tensor([[5, 6, 7, 8, 9], [9, 8, 7, 6, 5]])
    model = _peft_tiny(tmp_path, tiny_qwen2_dir).eval()
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        with model.disable_adapter():
            base = model(input_ids=ids).logits
        assert not torch.allclose(plain, base, atol=1e-4)  # the adapter matters
        assert lora.fuse_lora_linears(model) == 7 * model.config.num_hidden_layers
        assert lora.fuse_lora_linears(model) == 0  # once per module
        assert torch.allclose(model(input_ids=ids).logits, plain, atol=1e-5)
        with model.disable_adapter():
            assert torch.allclose(model(input_ids=ids).logits, base, atol=1e-5)
        served = []
        real = lora._mixed_rows
        lora._mixed_rows = lambda *a: served.append(real(*a)) or served[-1]
        try:  # a mixed batch: one kernel call per projection, no PEFT gather/scatter
            mixed = model(input_ids=ids, adapter_names=["__base__", "default"]).logits
        finally:
            lora._mixed_rows = real
        assert len(served) == 7 * model.config.num_hidden_layers and all(y is not None for y in served)
        assert torch.allclose(mixed[0], base[0], atol=1e-5) and torch.allclose(mixed[1], plain[1], atol=1e-5)
        model.merge_adapter()
        assert torch.allclose(model(input_ids=ids).logits, plain, atol=1e-4)
        model.unmerge_adapter()

    dora = _peft_tiny(tmp_path / "dora", tiny_qwen2_dir, use_dora=True).eval()
    with torch.no_grad():
        want = dora(input_ids=ids).logits
        lora.fuse_lora_linears(dora)

        def refuse(*_a, **_k):
            raise AssertionError("DoRA is not plain LoRA: PEFT's forward must run")

        lora.LoraLinear.apply, saved = refuse, lora.LoraLinear.apply
        try:
            assert torch.allclose(dora(input_ids=ids).logits, want, atol=1e-6)
        finally:
            lora.LoraLinear.apply = saved


def _lora_state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("fused", [False, True])
def test_merged_lora_decodes_the_adapted_model_and_leaves_it_as_it_was(tmp_path, tiny_qwen2_dir, fused):
    """Inside merged_lora every projection is one product with W + scale * B A: the adapted model's logits (to
    fp32 rounding); afterwards each module has the forward it had and no weight moved, base or adapter."""
    ids = torch.tensor([[5, 6, 7, 8, 9], [9, 8, 7, 6, 5]])
    model = _peft_tiny(tmp_path, tiny_qwen2_dir).eval()
    if fused:
        lora.fuse_lora_linears(model)
    adapted = [m for m in model.modules() if hasattr(m, "lora_A")]
    forwards = [vars(m).get("forward") for m in adapted]
    before = _lora_state(model)
    calls = []
    real = lora.LoraLinear.apply
    lora.LoraLinear.apply = lambda *a: calls.append(1) or real(*a)
    try:
        with torch.no_grad():
            want = model(input_ids=ids).logits
            calls.clear()
            with lora.merged_lora(model) as merged:
                assert merged == 7 * model.config.num_hidden_layers == len(adapted)
                got = model(input_ids=ids).logits
                mixed = model(input_ids=ids, adapter_names=["__base__", "default"]).logits
            with model.disable_adapter():
                base = model(input_ids=ids).logits
    finally:
        lora.LoraLinear.apply = real
    assert not calls  # no LoRA product ran apart from its base while merged
    assert torch.allclose(got, want, atol=1e-5) and not torch.allclose(got, base, atol=1e-4)
    # a mixed batch is the module's own forward: row 0 without the adapter, row 1 with it
    assert torch.allclose(mixed[0], base[0], atol=1e-5) and torch.allclose(mixed[1], want[1], atol=1e-5)
    assert [vars(m).get("forward") for m in adapted] == forwards
    after = _lora_state(model)
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_merged_lora_merges_nothing_it_cannot_serve(tmp_path, tiny_qwen2_dir):
    model = _peft_tiny(tmp_path, tiny_qwen2_dir).eval()
    with lora.merged_lora(model) as merged:  # gradients on: training needs the factors apart
        assert merged == 0
    with torch.no_grad():
        with lora.merged_lora(model, budget=0) as merged:  # copies over the memory budget
            assert merged == 0
        with model.disable_adapter(), lora.merged_lora(model) as merged:  # the base model decodes
            assert merged == 0
        with decoding.decoding_kernels(model, merge=False):  # rows with different adapters
            assert not [m for m in model.modules() if "forward" in vars(m) and hasattr(m, "lora_A")]
        model.to(torch.bfloat16)  # rounding W + scale * B A to 16 bits would be another model
        with lora.merged_lora(model) as merged:
            assert merged == 0
    dora = _peft_tiny(tmp_path / "dora", tiny_qwen2_dir, use_dora=True).eval()
    with torch.no_grad(), lora.merged_lora(dora) as merged:
        assert merged == 0


def test_lora_kernel_auto_is_fused_off_cuda():
    assert lora.use_lora_kernel("auto", "cpu")
    assert not lora.use_lora_kernel("auto", "cuda:0")
    assert lora.use_lora_kernel("fused", "cuda:0")
    assert not lora.use_lora_kernel("peft", "cpu")


# ------------------------------------------------------------------------------------------ decoding attention


def _eager(query, key, value, mask, scaling):
    """transformers' eager attention for one query position: repeated keys, then the same arithmetic."""
    rep = query.shape[1] // key.shape[1]
    k, v = key.repeat_interleave(rep, dim=1), value.repeat_interleave(rep, dim=1)
    scores = torch.matmul(query, k.transpose(2, 3)) * scaling
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(weights, v).transpose(1, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("masking", ["none", "bool", "additive"])
def test_grouped_attention_is_eager_attention_without_repeated_keys(dtype, masking):
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(0)
    b, h, groups, length, d = 3, 6, 2, 17, 8
    q = torch.randn(b, h, 1, d, generator=gen).to(dtype)
    k, v = (torch.randn(b, groups, length, d, generator=gen).to(dtype) for _ in range(2))
    mask = None
    if masking != "none":
        mask = torch.ones(b, 1, 1, length, dtype=torch.bool)
        mask[0, ..., :5] = False  # a left-padded row
        if masking == "additive":
            mask = torch.zeros(b, 1, 1, length, dtype=dtype).masked_fill(~mask, torch.finfo(dtype).min)
    got = decoding.grouped_attention(q, k, v, mask, 0.3)
    assert got.shape == (b, 1, h, d) and got.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 2e-2
    assert torch.allclose(got.float(), _eager(q, k, v, mask, 0.3).float(), atol=tol, rtol=tol)
    fp32_mask = mask if mask is None or mask.dtype == torch.bool else mask.float()
    k32, v32 = (x.float().repeat_interleave(h // groups, 1) for x in (k, v))
    want = F.scaled_dot_product_attention(q.float(), k32, v32, attn_mask=fp32_mask, scale=0.3).transpose(1, 2)
    assert torch.allclose(got.float(), want, atol=4 * tol, rtol=4 * tol)
    if mask is not None:  # a masked position takes no weight: changing its value changes nothing
        v2 = v.clone()
        v2[0, :, :5] = 1e3
        assert torch.equal(decoding.grouped_attention(q, k, v2, mask, 0.3), got)


def _tiny_causal(tiny_qwen2_dir, dtype):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir, dtype=dtype, attn_implementation="sdpa")
    return model.eval()


def test_grouped_decoding_serves_16_bit_decoding_steps_only_and_restores_the_model(
    tiny_qwen2_dir, monkeypatch
):
    """In bf16 on a CPU, each one-token step's attention is the grouped product (logits as with transformers'
    SDPA, to bf16 rounding); the prefill goes to SDPA; the model's implementation is back afterwards; fp32
    models are left alone."""
    from transformers import DynamicCache

    model = _tiny_causal(tiny_qwen2_dir, torch.bfloat16)
    assert model.config.num_attention_heads != model.config.num_key_value_heads  # grouped-query attention
    calls = []
    real = decoding.grouped_attention
    monkeypatch.setattr(decoding, "grouped_attention", lambda *a: calls.append(a[0].shape) or real(*a))
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(10, 1000, (2, 9), generator=gen)
    attention = torch.ones(2, 9, dtype=torch.long)
    attention[0, :3] = 0  # left padding, as batched generation pads

    def step_logits():
        cache = DynamicCache()
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        model(input_ids=ids, attention_mask=attention, position_ids=positions, past_key_values=cache)
        nxt = torch.tensor([[5], [7]])
        mask = torch.cat([attention, attention.new_ones(2, 1)], dim=1)
        out = model(
            input_ids=nxt, attention_mask=mask, position_ids=positions[:, -1:] + 1, past_key_values=cache
        )
        return out.logits[:, -1].float()

    with torch.no_grad():
        want = step_logits()
        with decoding.grouped_decoding(model):
            assert model.config._attn_implementation.startswith(decoding.GROUPED_DECODING)
            got = step_logits()
    assert model.config._attn_implementation == "sdpa"
    layers = model.config.num_hidden_layers
    assert len(calls) == layers and all(shape[2] == 1 for shape in calls)  # decoding steps only, every layer
    assert torch.allclose(got, want, atol=5e-2, rtol=5e-2)
    assert (got.argmax(-1) == want.argmax(-1)).all()
    fp32 = _tiny_causal(tiny_qwen2_dir, torch.float32)
    with decoding.grouped_decoding(fp32):
        assert fp32.config._attn_implementation == "sdpa"  # torch's fp32 SDPA is as fast: nothing to change


# ------------------------------------------------------------------------------------------ decoding head


def test_skinny_head_gives_the_same_logits_and_is_removed_afterwards():
    torch.manual_seed(0)

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lm_head = nn.Linear(16, 300, bias=False)

        def get_output_embeddings(self) -> nn.Module:
            return self.lm_head

    model = Tiny()
    few, many = torch.randn(2, 3, 16), torch.randn(1, decoding.SKINNY_ROWS + 1, 16)
    want_few, want_many = model.lm_head(few).detach(), model.lm_head(many).detach()
    with torch.no_grad(), decoding.skinny_head(model):
        assert "forward" in vars(model.lm_head)
        assert torch.allclose(model.lm_head(few), want_few, atol=1e-5)
        assert torch.allclose(model.lm_head(many), want_many, atol=1e-5)
    assert "forward" not in vars(model.lm_head)
    with decoding.skinny_head(model):  # with gradients on (training), nn.Linear's own path
        out = model.lm_head(few)
        out.sum().backward()
    assert model.lm_head.weight.grad is not None
    biased = Tiny()
    biased.lm_head = nn.Linear(16, 300)
    with decoding.skinny_head(biased):
        assert "forward" not in vars(biased.lm_head)
    bf16 = Tiny().to(torch.bfloat16)  # bf16 on a CPU with bf16 units: F.linear is the faster order there
    with torch.no_grad(), decoding.skinny_head(bf16):
        assert "forward" not in vars(bf16.lm_head)
