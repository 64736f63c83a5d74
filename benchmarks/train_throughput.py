"""Training throughput: the tutorial recipe vs a plain TRL SFTTrainer vs thinktune's default path, one process.

    python benchmarks/train_throughput.py                          # SmolLM2-135M, CPU, a few minutes
    python benchmarks/train_throughput.py --model tiny-qwen2       # a tiny random Qwen2 (R1 tokenizer)
    python benchmarks/train_throughput.py --steps 8 --batch 4 --out /tmp/bench

Same model weights, same examples (the shared medical-o1 demo data rendered by thinktune's Formatter, so every
arm sees identical token ids), same micro-batch and number of optimizer steps; only the recipe differs:

(i)   tutorial: every example padded to a fixed max_length large enough to keep the longest example whole,
      labels = input_ids (padding included, as in the copied recipe), LoRA r=8 on q_proj/v_proj, plain HF
      Trainer, lr 2e-4.
(ii)  TRL: SFTTrainer and SFTConfig at their defaults (prompt-completion loss, padded batches, lr 2e-5) on the
      same pre-tokenized rows, LoRA with PEFT's defaults (r=8 on q_proj/v_proj); only max_length is raised to the
      tutorial's so no example is truncated.
(iii) thinktune: `thinktune.train.build_trainer` with thinktune's default config (padding-free, packed SDPA,
      TRL's chunked loss, LoRA r=16 on all linear layers, lr 2e-4), i.e. what `thinktune train` runs.

On a CPU every arm computes in fp32, as the tutorial and TRL do there; the `thinktune-bf16` arm is thinktune's path
with the frozen base in bf16 and the adapter in fp32, which `model.dtype=auto` picks on a CPU with bf16 units
(AVX512-BF16 or AMX; elsewhere bf16 is emulated and the arm shows how much slower that is). Each arm's
completion loss is computed in its own precision.

The first optimizer step of each arm is a warm-up and not timed. Reported per arm: examples/s, real (non-pad)
tokens/s, supervised tokens/s (tokens whose label is trained, padding excluded), padding efficiency (real /
processed positions), peak memory (CUDA: max_memory_allocated; CPU: peak RSS growth over the arm, sampled),
the last training loss, and the completion loss (mean NLL of the reasoning+answer tokens) of the same examples
before and after training, computed the same way for every arm. Guards: every loss finite, the completion loss
falls, every gradient norm finite and non-zero.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

DATA = (
    Path(os.environ.get("THINKTUNE_SHARED", ROOT.parent / "shared")) / "data/medical_o1_demo/demo_data.json"
)
if not DATA.is_file():
    DATA = Path("/work/shared/data/medical_o1_demo/demo_data.json")


# ------------------------------------------------------------------------------------------ measuring


class RssPeak:
    """Peak resident memory growth while active (CPU), sampled every 20 ms from /proc/self/statm."""

    def __init__(self) -> None:
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        return self.peak - self.start


class BatchStats:
    """Wraps a data collator and records, per batch, processed positions, real tokens and supervised tokens."""

    def __init__(self, collator: Any) -> None:
        self.collator = collator
        self.batches: list[tuple[int, int, int, int]] = []  # (examples, positions, real, supervised)

    def __call__(self, features: list[dict]) -> dict:
        batch = self.collator(features)
        ids, labels = batch["input_ids"], batch["labels"]
        real = batch["attention_mask"].bool() if "attention_mask" in batch else ids.new_ones(ids.shape).bool()
        supervised = int(((labels != -100) & real).sum())
        self.batches.append((len(features), int(ids.numel()), int(real.sum()), supervised))
        return batch


def step_timer() -> Any:
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            self.ends.append(time.perf_counter())

    return StepTimer()


def completion_nll(model: Any, encoded: list[Any]) -> float:
    """Mean NLL of the completion tokens (reasoning, answer, end-of-turn) of `encoded`, one example at a time."""
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for e in encoded:
            ids = torch.tensor([e.input_ids], device=base.device)
            keep = torch.tensor(e.completion_mask[1:], device=base.device).bool()
            # Project only the supervised positions (LoRA never adapts lm_head here): no full-vocabulary logits.
            hidden = base.model(input_ids=ids, use_cache=False).last_hidden_state[0, :-1]
            logits = base.lm_head(hidden[keep]).float()
            nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:][keep], reduction="sum")
            total, count = total + float(nll), count + int(keep.sum())
    model.train()
    return total / count


# ------------------------------------------------------------------------------------------ arms


def _train_args(out: str, steps: int, batch: int, on_gpu: bool) -> dict[str, Any]:
    return {
        "output_dir": out,
        "max_steps": steps + 1,  # + the untimed warm-up step
        "per_device_train_batch_size": batch,
        "gradient_accumulation_steps": 1,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "seed": 42,
        "use_cpu": not on_gpu,
        "bf16": on_gpu,
        "disable_tqdm": True,
    }


def arm_tutorial(model: Any, tok: Any, encoded: list[Any], max_length: int, steps: int, batch: int, out: str):
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments, default_data_collator

    pad = tok.pad_token_id
    rows = {"input_ids": [], "attention_mask": [], "labels": []}
    for e in encoded:
        n = len(e.input_ids)
        ids = e.input_ids + [pad] * (max_length - n)
        rows["input_ids"].append(ids)
        rows["attention_mask"].append([1] * n + [0] * (max_length - n))
        rows["labels"].append(list(ids))  # labels = input_ids: the recipe trains on prompt and padding alike
    lora = LoraConfig(
        r=8, lora_alpha=32, lora_dropout=0.05, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
    )
    model = get_peft_model(model, lora)
    args = TrainingArguments(
        **_train_args(out, steps, batch, model.device.type == "cuda"), learning_rate=2e-4
    )
    stats = BatchStats(default_data_collator)
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_dict(rows), data_collator=stats)
    return trainer, stats


def arm_trl(model: Any, tok: Any, encoded: list[Any], max_length: int, steps: int, batch: int, out: str):
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from thinktune.train.trainer import to_dataset

    on_gpu = model.device.type == "cuda"
    args = SFTConfig(**_train_args(out, steps, batch, on_gpu), max_length=max_length)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=to_dataset(encoded),
        processing_class=tok,
        peft_config=LoraConfig(task_type="CAUSAL_LM"),
    )
    stats = BatchStats(trainer.data_collator)
    trainer.data_collator = stats
    return trainer, stats


def thinktune_config(model_dir: str, steps: int, batch: int, out: str, *extra: str) -> Any:
    from thinktune.configfile import load_config

    return load_config(
        None,
        [
            *extra,
            f"model.name_or_path={model_dir}",
            f"train.output_dir={out}",
            f"train.max_steps={steps + 1}",
            f"train.per_device_train_batch_size={batch}",
            "train.gradient_accumulation_steps=1",
            "train.logging_steps=1",
            "train.save_steps=100000",
        ],
    )


def arm_thinktune(cfg: Any, model: Any, tok: Any, encoded: list[Any], out: str, precision: Any):
    from thinktune.rundir import RunDir
    from thinktune.train.trainer import build_trainer

    run = RunDir(Path(out))
    run.path.mkdir(parents=True, exist_ok=True)
    trainer, cbs = build_trainer(
        cfg, model, tok, encoded, [], run, device=str(model.device), precision=precision
    )
    trainer.remove_callback(cbs["curve"])  # the loss-curve PNG is not part of a training step
    stats = BatchStats(trainer.data_collator)
    trainer.data_collator = stats
    return trainer, stats


# ------------------------------------------------------------------------------------------ main


def resolve_model(name: str, work: Path) -> str:
    from thinktune.models import assets

    if name == "smollm2":
        return str(assets.smollm2_dir())
    if name == "tiny-qwen2":
        return str(
            assets.build_tiny_model(
                work / "tiny-qwen2",
                assets.r1_distill_tokenizer_dir(False),
                "qwen2",
                hidden_size=128,
                num_layers=4,
                num_heads=4,
                num_kv_heads=2,
                intermediate_size=384,
            )
        )
    return name


def run_arm(
    name: str, build: Any, encoded: list[Any], base_nll: float, steps: int, batch: int
) -> dict[str, Any]:
    import torch

    on_gpu = torch.cuda.is_available()
    gc.collect()
    if on_gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with RssPeak() as rss:
        trainer, stats = build()
        timer = step_timer()
        trainer.add_callback(timer)
        started = time.perf_counter()
        trainer.train()
        ended = time.perf_counter()
    timed = stats.batches[1 : steps + 1]
    seconds = timer.ends[-1] - timer.ends[0]
    examples, positions, real, supervised = (sum(b[i] for b in timed) for i in range(4))
    logs = [h for h in trainer.state.log_history if "loss" in h]
    losses = [h["loss"] for h in logs]
    grads = [h.get("grad_norm", float("nan")) for h in logs]
    after = completion_nll(trainer.model, encoded)
    peak = torch.cuda.max_memory_allocated() if on_gpu else rss.growth
    row = {
        "arm": name,
        "examples_per_s": examples / seconds,
        "tokens_per_s": real / seconds,
        "supervised_tokens_per_s": supervised / seconds,
        "padding_efficiency": real / positions,
        "peak_memory_gb": peak / 2**30,
        "peak_memory_kind": "cuda max_memory_allocated" if on_gpu else "CPU peak RSS growth",
        "timed_seconds": seconds,
        "total_seconds": ended - started,
        "last_train_loss": losses[-1],
        "completion_loss_before": base_nll,
        "completion_loss_after": after,
        "losses_finite": all(math.isfinite(x) for x in losses),
        "loss_falls": after < base_nll,
        "grad_norm_ok": all(math.isfinite(g) and g > 0 for g in grads),
    }
    row["guards"] = "ok" if row["losses_finite"] and row["loss_falls"] and row["grad_norm_ok"] else "FAIL"
    del trainer
    gc.collect()
    return row


def table(rows: list[dict[str, Any]]) -> str:
    base = {r["arm"]: r for r in rows}
    tut, trl = base.get("tutorial"), base.get("trl-default")
    head = (
        "| arm | precision | examples/s | tokens/s | supervised tok/s | padding eff. | peak mem GB | last train loss "
        "| completion loss before → after | guards | × tutorial | × TRL |"
    )
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        x_tut = r["examples_per_s"] / tut["examples_per_s"] if tut else float("nan")
        x_trl = r["examples_per_s"] / trl["examples_per_s"] if trl else float("nan")
        lines.append(
            f"| {r['arm']} | {r.get('precision', '')} | {r['examples_per_s']:.3f} | {r['tokens_per_s']:.1f} | "
            f"{r['supervised_tokens_per_s']:.1f} | {r['padding_efficiency']:.3f} | {r['peak_memory_gb']:.2f} | "
            f"{r['last_train_loss']:.4f} | {r['completion_loss_before']:.4f} → {r['completion_loss_after']:.4f} | "
            f"{r['guards']} | {x_tut:.2f} | {x_trl:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2", help="smollm2 | tiny-qwen2 | a model folder")
    p.add_argument(
        "--steps", type=int, default=4, help="timed optimizer steps per arm (after one warm-up step)"
    )
    p.add_argument("--batch", type=int, default=2, help="examples per micro-batch (all arms)")
    p.add_argument(
        "--arms",
        default="tutorial,trl-default,thinktune",
        help="comma-separated subset, in order (also the ablations thinktune-no-dropout: lora_dropout=0, "
        "thinktune-peft-lora: PEFT's own LoRA modules, and thinktune-bf16: the base in bf16 on a CPU)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", default=None, help="also write the table (markdown) and rows (JSON) here")
    args = p.parse_args(argv)

    import json
    import logging
    import warnings

    import torch
    import transformers
    import trl

    from thinktune.configfile import load_config
    from thinktune.data.load import load_examples, split_examples
    from thinktune.formatting import doctor
    from thinktune.formatting.formatter import Formatter
    from thinktune.models.attention import resolve_attention
    from thinktune.models.loading import load_model, load_tokenizer
    from thinktune.models.precision import cpu_bf16_supported, resolve_precision

    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    transformers.logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    work = Path(tempfile.mkdtemp(prefix="tt-throughput-"))
    model_dir = resolve_model(args.model, work)
    mcfg = load_config(None, [f"model.name_or_path={model_dir}"]).model
    tok = load_tokenizer(mcfg)
    fmt = Formatter(tok)
    loaded = load_examples(str(DATA), schema="medical-o1").examples
    all_enc = doctor.encode_all(fmt, loaded)
    # The tutorial's fixed length: long enough for the longest example of the data set, rounded up to 128.
    max_length = -(-max(len(e.input_ids) for e in all_enc) // 128) * 128
    n = (args.steps + 1) * args.batch
    picked, _ = split_examples(loaded, val_size=0, seed=0, shuffle=True, max_examples=n)
    encoded = doctor.encode_all(fmt, picked)
    # fp32 on a CPU for every arm but thinktune-bf16, so the arms differ by recipe alone
    precision = resolve_precision("auto", device, bf16_supported=False if device == "cpu" else None)
    bf16 = resolve_precision("auto", device, bf16_supported=True)

    def fresh(attention: str = "sdpa", prec: Any = precision) -> Any:
        torch.manual_seed(0)
        return load_model(mcfg, device=device, precision=prec, attention=attention)

    base_nll = completion_nll(fresh(), encoded)
    base_nll_bf16 = completion_nll(fresh(prec=bf16), encoded) if "thinktune-bf16" in args.arms else base_nll
    lengths = sorted(len(e.input_ids) for e in encoded)
    print(
        f"model {args.model} ({model_dir}), {device}, {torch.get_num_threads()} threads; {n} examples "
        f"({lengths[0]}..{lengths[-1]} tokens, mean {sum(lengths) / n:.0f}); tutorial max_length {max_length}; "
        f"{args.steps} timed steps of {args.batch} examples per arm",
        flush=True,
    )
    tcfg = thinktune_config(model_dir, args.steps, args.batch, str(work / "thinktune"))
    # The same path without LoRA dropout: each of the 210 adapted modules otherwise makes its own dropout copy
    # of its input, which is a large share of a CPU step (an ablation, not the default).
    tcfg0 = thinktune_config(
        model_dir, args.steps, args.batch, str(work / "thinktune0"), "lora.lora_dropout=0"
    )
    # The default path with PEFT's own LoRA modules (an ablation: what the one-node projections add).
    tcfg_peft = thinktune_config(
        model_dir, args.steps, args.batch, str(work / "thinktune-peft"), "train.lora_kernel=peft"
    )
    builders = {
        "tutorial": lambda: arm_tutorial(
            fresh(), tok, encoded, max_length, args.steps, args.batch, str(work / "tutorial")
        ),
        "trl-default": lambda: arm_trl(
            fresh(), tok, encoded, max_length, args.steps, args.batch, str(work / "trl")
        ),
        "thinktune": lambda: arm_thinktune(
            tcfg,
            fresh(
                resolve_attention(
                    tcfg.model.attn_implementation, device, padding_free=tcfg.train.padding_free
                )
            ),
            tok,
            encoded,
            str(work / "thinktune"),
            precision,
        ),
        "thinktune-no-dropout": lambda: arm_thinktune(
            tcfg0,
            fresh(
                resolve_attention(
                    tcfg0.model.attn_implementation, device, padding_free=tcfg0.train.padding_free
                )
            ),
            tok,
            encoded,
            str(work / "thinktune0"),
            precision,
        ),
        "thinktune-peft-lora": lambda: arm_thinktune(
            tcfg_peft,
            fresh(
                resolve_attention(
                    tcfg_peft.model.attn_implementation, device, padding_free=tcfg_peft.train.padding_free
                )
            ),
            tok,
            encoded,
            str(work / "thinktune-peft"),
            precision,
        ),
        "thinktune-bf16": lambda: arm_thinktune(
            tcfg,
            fresh(
                resolve_attention(
                    tcfg.model.attn_implementation, device, padding_free=tcfg.train.padding_free
                ),
                bf16,
            ),
            tok,
            encoded,
            str(work / "thinktune-bf16"),
            bf16,
        ),
    }
    rows = []
    for name in args.arms.split(","):
        before = base_nll_bf16 if name == "thinktune-bf16" else base_nll
        row = run_arm(name, builders[name], encoded, before, args.steps, args.batch)
        row["precision"] = (bf16 if name == "thinktune-bf16" else precision).short
        print(
            f"  {name}: {row['examples_per_s']:.3f} examples/s, {row['timed_seconds']:.1f} s timed",
            flush=True,
        )
        rows.append(row)
    md = table(rows)
    env = (
        f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; {platform.node()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs, device {device}"
        + (f" ({torch.cuda.get_device_name(0)})" if device == "cuda" else "")
        + f"; torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}"
        + (f"; CPU bf16 units: {'yes' if cpu_bf16_supported() else 'no'}" if device == "cpu" else "")
    )
    print()
    print(env)
    print(md)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"train_throughput_{args.model.replace('/', '_')}.md").write_text(env + "\n\n" + md + "\n")
        (out / f"train_throughput_{args.model.replace('/', '_')}.json").write_text(
            json.dumps({"env": env, "args": vars(args), "rows": rows}, indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
