"""End-to-end training (slow tier): a tiny random Qwen2 trained in-process, and SmolLM2 through `thinktune demo`
with a few steps."""

from __future__ import annotations

import json

import pytest
import torch

from _train_helpers import (
    RUN_FILES,
    adapter_tensors,
    arithmetic_rows,
    read_metrics,
    single_thread,
    write_rows,
)
from thinktune.configfile import load_config
from thinktune.formatting.formatter import Formatter
from thinktune.infer.session import run_tokenizer
from thinktune.models.loading import load_adapter, load_model
from thinktune.models.precision import resolve_precision
from thinktune.train import recipe as T
from thinktune.train.recipe import train

pytestmark = pytest.mark.slow


@pytest.fixture
def one_thread():
    with single_thread():
        yield


def test_tiny_qwen2_end_to_end(tmp_path, tiny_qwen2_dir, monkeypatch, one_thread):
    data = write_rows(tmp_path / "arith.jsonl", arithmetic_rows(12))
    cfg = load_config(
        None,
        [
            f"model.name_or_path={tiny_qwen2_dir}",
            f"data.source={data}",
            "data.max_length=128",
            "data.val_size=4",
            f"train.output_dir={tmp_path / 'runs'}",
            "train.run_name=tiny",
            "train.max_steps=8",  # 8 train examples, 2 per step: exactly 2 epochs
            "train.per_device_train_batch_size=2",
            "train.gradient_accumulation_steps=1",
            "train.learning_rate=2e-2",
            "train.warmup_ratio=0",
            "train.logging_steps=1",
            "train.eval_steps=4",
            "train.save_steps=4",
            "lora.lora_dropout=0",
        ],
    )
    trained = {}

    def keep(*args, **kwargs):  # hold on to the in-memory model so its weights can be inspected afterwards
        trained["model"] = load_model(*args, **kwargs)
        return trained["model"]

    monkeypatch.setattr(T, "load_model", keep)
    run = train(cfg)

    # The run folder is complete and says what happened.
    for name in RUN_FILES:
        assert (run.path / name).is_file(), name
    assert sorted(p.name for p in run.checkpoints.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-8"]
    summary = json.loads(run.summary.read_text())
    assert summary["status"] == "completed" and summary["steps"] == 8 and summary["epochs"] == 2
    env = json.loads(run.env_file.read_text())
    assert env["precision"] == "fp32 (CPU)" and env["device"] == "cpu" and env["torch"]

    # Loss falls, on the training batches and on the held-out questions.
    train_log, eval_log = read_metrics(run.path)
    assert [r["step"] for r in train_log] == list(range(1, 9))
    assert [r["step"] for r in eval_log] == [0, 4, 8]
    assert train_log[-1]["loss"] < train_log[0]["loss"] - 0.15
    assert eval_log[-1]["eval_loss"] < eval_log[0]["eval_loss"] - 0.15
    assert summary["initial_eval_loss"] == eval_log[0]["eval_loss"]
    assert summary["final_eval_loss"] == eval_log[-1]["eval_loss"]

    # Token counters are exact: 2 epochs over the saved training examples.
    tok = run_tokenizer(run)
    fmt = Formatter.from_config(tok, run.config().data)
    encoded = [fmt.encode(e) for e in run.examples("train")]
    assert summary["train_tokens"] == 2 * sum(len(e.input_ids) for e in encoded)
    assert summary["supervised_tokens"] == 2 * sum(sum(e.completion_mask) for e in encoded)
    assert train_log[-1]["supervised_tokens"] == summary["supervised_tokens"]
    assert all(r["tokens_per_s"] > 0 for r in train_log)

    # LoRA weights moved, base weights did not, and only LoRA weights were saved.
    model = trained["model"]
    fresh = load_model(run.config().model, device="cpu", precision=resolve_precision("float32", "cpu"))
    base = {
        k.replace("base_model.model.", "").replace(".base_layer", ""): v
        for k, v in model.state_dict().items()
    }
    for name, value in fresh.state_dict().items():
        assert torch.equal(base[name], value), f"base weight {name} changed"
    saved = adapter_tensors(run.adapter)
    assert saved and all("lora_" in k for k in saved)
    assert all(v.abs().max() > 0 for k, v in saved.items() if "lora_B" in k)  # lora_B starts at zero

    # The saved adapter reloads with PEFT and gives the same logits as the trained model.
    reloaded = load_adapter(fresh, run.adapter).eval()
    model.eval()
    ids = torch.tensor([encoded[0].input_ids])
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, reloaded(input_ids=ids).logits, atol=1e-5)
    assert (run.adapter / "chat_template.jinja").is_file() or "chat_template" in json.loads(
        (run.adapter / "tokenizer_config.json").read_text()
    )


def test_smollm2_demo_in_a_few_steps(tmp_path, smollm2_dir, monkeypatch, capsys):
    """The real demo path on SmolLM2-135M with a handful of short examples: training lowers the held-out loss
    and the before/after comparison prints side by side."""
    from thinktune.demo import run_demo

    monkeypatch.chdir(tmp_path)
    run = run_demo(
        [
            "data.max_length=256",
            "data.length_policy=truncate_reasoning",
            "data.max_examples=10",
            "data.val_size=2",
            "train.max_steps=4",
            "train.per_device_train_batch_size=2",
            "train.gradient_accumulation_steps=1",
            "train.learning_rate=2e-3",
            "train.eval_steps=4",
            "train.save_steps=4",
            "train.logging_steps=1",
            "eval.limit=1",
            "generation.max_new_tokens=12",
        ]
    )
    out = capsys.readouterr().out
    assert run.path.resolve() == (tmp_path / "runs" / "demo").resolve()
    summary = json.loads(run.summary.read_text())
    assert summary["final_eval_loss"] < summary["initial_eval_loss"]
    train_log, _ = read_metrics(run.path)
    assert train_log[-1]["loss"] < train_log[0]["loss"]
    saved = adapter_tensors(run.adapter)
    assert all(v.abs().max() > 0 for k, v in saved.items() if "lora_B" in k)
    assert "BEFORE (base model)" in out and "AFTER (fine-tuned)" in out and "reasoning:" in out
    assert "held-out loss:" in out and str(run.loss_curve) in out
    record = json.loads((run.path / "demo.json").read_text())
    assert record["questions"] == 1 and record["initial_eval_loss"] == summary["initial_eval_loss"]
    pairs = [json.loads(line) for line in (run.path / "compare.jsonl").read_text().splitlines()]
    assert len(pairs) == 1 and pairs[0]["question"] == run.examples("validation")[0].question
    assert (run.path / "report.html").is_file()
