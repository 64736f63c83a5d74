"""GRPO throughput: TRL's GRPOTrainer at its defaults vs thinktune's GRPO path, same model, data and steps, one run.

    python benchmarks/grpo_throughput.py                         # SmolLM2-135M, CPU, the bundled MCQs
    python benchmarks/grpo_throughput.py --start runs/demo       # both arms continue the SFT demo's adapter
    python benchmarks/grpo_throughput.py --steps 4 --ablations   # also thinktune without each of its kernels

Both arms get the same model weights, the same prompts (the bundled multiple-choice questions rendered by
thinktune's Formatter, as `thinktune eval` renders them), the same reward functions (thinktune's correct / format /
length, so "reward" means the same in both), the same LoRA (thinktune's LoraConfig on the same modules, or the same
starting adapter), the same completions per step (prompts x generations), the same max_completion_length and
sampling temperature, and the same number of optimizer steps; only the trainer set-up differs:

(i)  trl-default: ``GRPOTrainer`` and ``GRPOConfig`` at their defaults (transformers' generate, TRL's chunked LM
     head, gradient checkpointing on, learning rate 1e-6, beta 0, loss dapo), CPU and fp32 where there is no GPU;
(ii) thinktune: :func:`thinktune.train.grpo.build_grpo_trainer` with thinktune's defaults, i.e. what ``thinktune
     grpo`` runs: the rollout through thinktune's batched generator (skinny output head while decoding, the
     one-node LoRA projections), the one-pass head scoring only the completion tokens at the sampling
     temperature, gradient checkpointing only when the plan needs it, learning rate 1e-5.

The first optimizer step is a warm-up and not timed. Reported per arm: seconds per step, seconds spent sampling per
step and sampled tokens per second (transformers' ``generate`` is timed in both arms), the rest of the step
(log-probabilities, backward, optimizer), peak memory (CUDA: max_memory_allocated; CPU: peak RSS growth), the mean
reward over the timed steps and at the last one; and the ratios thinktune / TRL. The learning rates differ (each
arm's default), so the rewards after N steps are reported, not compared as a speed result.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from train_throughput import RssPeak, resolve_model, step_timer  # noqa: E402


class GenerateTimer:
    """Time every ``generate`` call of a model and count the tokens it produced (up to the first stop token)."""

    def __init__(self, model: Any, stops: list[int], metrics: Path | None = None) -> None:
        self.model, self.stops = model, set(stops)
        self.metrics = metrics  # thinktune's metrics.jsonl, for a rollout that does not call generate
        self.calls: list[tuple[float, int]] = []
        self._generate = model.generate
        model.generate = self._timed

    def _timed(self, *args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        out = self._generate(*args, **kwargs)
        seconds = time.perf_counter() - began
        width = (kwargs.get("input_ids") if kwargs.get("input_ids") is not None else args[0]).shape[1]
        tokens = 0
        for row in out[:, width:].tolist():
            end = next((j + 1 for j, t in enumerate(row) if t in self.stops), len(row))
            tokens += end
        self.calls.append((seconds, tokens))
        return out


def config(model_dir: str, out: str, args: argparse.Namespace, *extra: str) -> Any:
    from thinktune.config import validate
    from thinktune.configfile import load_config

    return validate(
        load_config(
            None,
            [
                f"model.name_or_path={model_dir}",
                "data.source=sample:mcq",
                f"train.output_dir={out}",
                f"train.max_steps={args.steps + 1}",
                f"train.per_device_train_batch_size={args.prompts * args.generations}",
                "train.gradient_accumulation_steps=1",
                "train.logging_steps=1",
                "train.save_steps=100000",
                "train.warmup_ratio=0",
                "lora.lora_dropout=0",
                f"grpo.num_generations={args.generations}",
                f"grpo.max_completion_length={args.completion_length}",
                f"grpo.temperature={args.temperature}",
                *extra,
            ],
        )
    )


def setup(cfg: Any, start: str | None) -> tuple[Any, Any, Any, list[Any]]:
    """(model, LoraConfig or None, formatter, questions) exactly as `thinktune grpo` prepares them."""
    from thinktune.formatting.formatter import Formatter
    from thinktune.models.precision import resolve_precision
    from thinktune.train import rl

    begin = rl.starting_point(start, "--start")
    tok = rl.stage_tokenizer(cfg, begin)
    fmt = Formatter.from_config(tok, cfg.data)
    problems = rl.as_trained(rl.prepare_problems(cfg, fmt, max_prompt_length=512, stage="grpo"))
    device = "cuda" if _cuda() else "cpu"
    model, peft = rl.load_policy(
        cfg, begin, device=device, precision=resolve_precision(cfg.model.dtype, device), attention="sdpa",
        checkpointing=False,
    )  # fmt: skip
    return model, peft, fmt, problems.train


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def arm_trl(cfg: Any, start: str | None, out: str) -> tuple[Any, GenerateTimer]:
    """TRL's GRPOTrainer at its defaults, with thinktune's rewards and prompts."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from thinktune.infer.generate import stop_token_ids
    from thinktune.train.rewards import RewardScorer

    model, peft, fmt, questions = setup(cfg, start)
    g = cfg.grpo
    scorer = RewardScorer(
        fmt.tokenizer, questions, dict(g.rewards), fmt.eot_id, fmt.prompt_opens_think, fmt.reasoning == "train",
        g.max_completion_length, g.length_buffer,
    )  # fmt: skip
    data = Dataset.from_dict(
        {"prompt": [fmt.prompt(q.message, q.system) for q in questions], "qid": list(range(len(questions)))}
    )
    on_gpu = _cuda()
    args = GRPOConfig(
        output_dir=out,
        max_steps=cfg.train.max_steps,
        per_device_train_batch_size=cfg.train.per_device_train_batch_size,
        gradient_accumulation_steps=1,
        num_generations=g.num_generations,
        max_completion_length=g.max_completion_length,
        temperature=g.temperature,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=cfg.train.seed,
        use_cpu=not on_gpu,
        bf16=on_gpu,  # TRL's default; a CPU trains in fp32
        reward_weights=[g.rewards[n] for n in scorer.names],
    )
    trainer = GRPOTrainer(
        model=model, reward_funcs=scorer.functions(), args=args, train_dataset=data, processing_class=fmt.tokenizer,
        peft_config=peft,
    )  # fmt: skip
    return trainer, GenerateTimer(trainer.model, stop_token_ids(fmt.tokenizer, fmt.eot_id))


def arm_thinktune(cfg: Any, start: str | None, out: str) -> tuple[Any, GenerateTimer]:
    from thinktune.infer.generate import stop_token_ids
    from thinktune.models.precision import resolve_precision
    from thinktune.rundir import RunDir
    from thinktune.train.grpo import build_grpo_trainer

    model, peft, fmt, questions = setup(cfg, start)
    run = RunDir(Path(out))
    run.path.mkdir(parents=True, exist_ok=True)
    device = "cuda" if _cuda() else "cpu"
    trainer, _ = build_grpo_trainer(
        cfg,
        model,
        peft,
        fmt,
        questions,
        run,
        device=device,
        precision=resolve_precision(cfg.model.dtype, device),
    )
    return trainer, GenerateTimer(trainer.model, stop_token_ids(fmt.tokenizer, fmt.eot_id), run.metrics)


def run_arm(name: str, build: Any) -> dict[str, Any]:
    import torch

    on_gpu = _cuda()
    gc.collect()
    if on_gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with RssPeak() as rss:
        trainer, gen = build()
        timer = step_timer()
        trainer.add_callback(timer)
        began = time.perf_counter()
        trainer.train()
        ended = time.perf_counter()
    steps = len(timer.ends) - 1
    seconds = timer.ends[-1] - timer.ends[0]
    sampled = gen.calls[1:]  # the warm-up step's sampling is not timed either
    gen_s = sum(s for s, _ in sampled)
    gen_tokens = sum(t for _, t in sampled)
    logs = [h for h in trainer.state.log_history if "reward" in h]
    if not gen.calls and gen.metrics is not None and gen.metrics.is_file():
        # thinktune's rollout samples without model.generate; it times itself (GenerationStats: the seconds and
        # the tokens of every completion, the end-of-turn token included) into each step of metrics.jsonl
        steps_logged = [json.loads(line) for line in gen.metrics.read_text().splitlines() if line.strip()]
        timed = [h for h in steps_logged[1:] if "generation_s" in h]
        gen_s = sum(h["generation_s"] for h in timed)
        gen_tokens = round(sum(h["generation_s"] * h["generation_tokens_per_s"] for h in timed))
    rewards = [h["reward"] for h in logs[1:]]
    peak = torch.cuda.max_memory_allocated() if on_gpu else rss.growth
    row = {
        "arm": name,
        "timed_steps": steps,
        "seconds_per_step": seconds / steps,
        "sampling_seconds_per_step": gen_s / steps,
        "rest_seconds_per_step": (seconds - gen_s) / steps,
        "sampled_tokens_per_s": gen_tokens / gen_s if gen_s else float("nan"),
        "sampled_tokens": gen_tokens,
        "peak_memory_gb": peak / 2**30,
        "peak_memory_kind": "cuda max_memory_allocated" if on_gpu else "CPU peak RSS growth",
        "mean_reward": sum(rewards) / len(rewards) if rewards else float("nan"),
        "last_reward": rewards[-1] if rewards else float("nan"),
        "total_seconds": ended - began,
    }
    del trainer
    gc.collect()
    return row


def table(rows: list[dict[str, Any]]) -> str:
    trl = next((r for r in rows if r["arm"] == "trl-default"), None)
    lines = [
        "| arm | s/step | sampling s/step | rest s/step | sampled tok/s | peak mem GB | mean reward | last reward "
        "| × TRL speed (steps/s) | × TRL sampling tok/s |",
        "|" + "---|" * 10,
    ]
    for r in rows:
        x = trl["seconds_per_step"] / r["seconds_per_step"] if trl else float("nan")
        xg = r["sampled_tokens_per_s"] / trl["sampled_tokens_per_s"] if trl else float("nan")
        lines.append(
            f"| {r['arm']} | {r['seconds_per_step']:.1f} | {r['sampling_seconds_per_step']:.1f} | "
            f"{r['rest_seconds_per_step']:.1f} | {r['sampled_tokens_per_s']:.1f} | {r['peak_memory_gb']:.2f} | "
            f"{r['mean_reward']:.3f} | {r['last_reward']:.3f} | {x:.2f} | {xg:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2", help="smollm2 | tiny-qwen2 | a model folder")
    p.add_argument("--start", help="an SFT run folder (or adapter) both arms continue; default: a fresh LoRA")
    p.add_argument(
        "--steps", type=int, default=3, help="timed optimizer steps per arm (after one warm-up step)"
    )
    p.add_argument("--prompts", type=int, default=2, help="prompts per optimizer step")
    p.add_argument("--generations", type=int, default=4, help="completions per prompt")
    p.add_argument("--completion-length", type=int, default=128)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument(
        "--ablations", action="store_true", help="also thinktune without the one-pass head / fused LoRA"
    )
    p.add_argument("--out", help="write results.json here")
    args = p.parse_args(argv)

    import torch
    import transformers
    import trl

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    work = Path(tempfile.mkdtemp(prefix="grpo-bench-"))
    model_dir = resolve_model(args.model, work)
    arms = [
        (
            "trl-default",
            lambda: arm_trl(config(model_dir, str(work / "trl"), args), args.start, str(work / "trl")),
        ),
        (
            "thinktune",
            lambda: arm_thinktune(config(model_dir, str(work / "tt"), args), args.start, str(work / "tt")),
        ),
    ]
    if args.ablations:
        arms += [
            ("thinktune, TRL's head", lambda: arm_thinktune(
                config(model_dir, str(work / "a1"), args, "train.loss_head=trl"), args.start, str(work / "a1"))),
            ("thinktune, PEFT's LoRA", lambda: arm_thinktune(
                config(model_dir, str(work / "a2"), args, "train.lora_kernel=peft"), args.start, str(work / "a2"))),
        ]  # fmt: skip
    rows = []
    for name, build in arms:
        print(f"arm {name} ...", file=sys.stderr, flush=True)
        rows.append(run_arm(name, build))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    facts = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
        + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""),
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "trl": trl.__version__,
        },
        "model": args.model,
        "start": args.start,
        "steps": args.steps,
        "prompts": args.prompts,
        "generations": args.generations,
        "completion_length": args.completion_length,
    }
    print(table(rows))
    print(json.dumps(facts))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "results.json").write_text(json.dumps({"facts": facts, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
