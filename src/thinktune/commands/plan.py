"""`thinktune plan`: will a run fit the GPU, and with which settings."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable

from thinktune.commands.common import EPILOG_OVERRIDES, add_settings, add_verbose, load_cli_config
from thinktune.errors import UsageError

log = logging.getLogger("thinktune")

# ------------------------------------------------------------------------------------------ plan


def add_plan(sub) -> Callable:
    p = sub.add_parser(
        "plan",
        help="will it fit? peak GPU memory by component and settings that fit your VRAM (no weights loaded)",
        description="Estimate the peak memory of a LoRA/QLoRA training step from the model's config.json alone "
        "(a local folder or config.json, a hub id when online, or a flagship model known offline), by component: "
        "weights, adapters, gradients, optimizer state, activations with and without gradient checkpointing, the "
        "LM head and loss, runtime overhead. Then recommend settings that fit the budget: LoRA in 16 bits or "
        "QLoRA, a max_length covering the data's p99 (with --data), micro-batch and gradient accumulation for the "
        "configured effective batch, checkpointing only when needed. Exit status 1 when nothing fits.",
        epilog="examples:\n"
        "  thinktune plan --model deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B --vram 8GB\n"
        "  thinktune plan --model deepseek-ai/DeepSeek-R1-Distill-Qwen-7B --vram 8GB --qlora\n"
        "  thinktune plan --model deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B --vram 8GB "
        "--data ../shared/data/medical_o1_demo/demo_data.json\n"
        "  thinktune plan demo-cpu --vram 12GB --json\n"
        "  thinktune plan grpo-r1-distill-qwen-1.5b --stage grpo --vram 8GB\n" + EPILOG_OVERRIDES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_verbose(p)
    add_settings(p)
    p.add_argument("--model", help="model.name_or_path: hub id, model folder, config.json, or a known model")
    p.add_argument("--vram", help="GPU memory budget, e.g. 8GB, 7.5GiB, 24GB (default: the detected GPU)")
    p.add_argument("--data", help="data.source: measure token lengths to pick max_length (p99)")
    p.add_argument("--max-length", type=int, help="data.max_length: keep this length fixed")
    p.add_argument(
        "--batch", type=int, help="keep this micro-batch (train.per_device_train_batch_size) fixed"
    )
    p.add_argument(
        "--effective-batch",
        type=int,
        help="examples per optimizer step to keep (default: the config's micro-batch x gradient accumulation)",
    )
    p.add_argument("--qlora", action="store_true", help="model.load_in_4bit=true: plan QLoRA only")
    p.add_argument(
        "--full-logits",
        action="store_true",
        help="estimate the plain transformers loss (full logits in fp32) instead of TRL's chunked LM head",
    )
    p.add_argument(
        "--stage",
        choices=["sft", "grpo", "dpo"],
        default="sft",
        help="plan `thinktune train` (sft, the default), `thinktune grpo` (sampling with a KV cache for every "
        "completion, padded prompt + completion micro-batches) or `thinktune dpo`",
    )
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    return _run_plan


def _run_plan(args: argparse.Namespace) -> int:
    import json

    from thinktune.plan.recommend import detected_gpu, parse_vram
    from thinktune.plan.report import build_plan, plan_to_json, print_plan
    from thinktune.utils import _json_default

    cfg = load_cli_config(
        args,
        {
            "model.name_or_path": args.model,
            "data.source": args.data,
            "data.max_length": args.max_length,
            "model.load_in_4bit": "true" if args.qlora else None,
        },
        need_data=False,
    )
    gpu = None if args.vram else detected_gpu()
    if args.vram:
        vram = parse_vram(args.vram)
    elif gpu is not None:
        vram = gpu[1]
        log.info("budget: %s (%.1f GiB)", gpu[0], vram / 2**30)
    else:
        raise UsageError("no CUDA GPU detected: give the budget of the GPU you plan for, e.g. --vram 8GB")
    plan = build_plan(
        cfg,
        vram,
        bf16_supported=gpu[2] if gpu else True,
        loss="full" if args.full_logits else "chunked",
        fix_length=args.max_length is not None,
        fix_batch=args.batch,
        effective_batch=args.effective_batch,
        stage=args.stage,
    )
    if args.json:
        print(json.dumps(plan_to_json(plan), indent=2, default=_json_default))
    else:
        print_plan(plan)
    return 0 if plan["recommendation"].fits else 1
