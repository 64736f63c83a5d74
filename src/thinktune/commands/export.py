"""`thinktune export` and `thinktune check-template`."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from thinktune.commands.common import add_verbose, split_target
from thinktune.errors import UsageError

# ------------------------------------------------------------------------------------------ export


def add_export(sub) -> Callable:
    p = sub.add_parser(
        "export",
        help="merge the adapter into a 16-bit base and write a Hugging Face folder, an Ollama model or a GGUF file",
        description="merged: safetensors + tokenizer + the training chat template + generation_config.json + "
        "model card. ollama: the same plus a Modelfile whose TEMPLATE, stop tokens and sampling reproduce "
        "training (then: ollama create NAME -f Modelfile). gguf: a GGUF file (f16 or q8_0; Llama and Qwen2) "
        "with the chat template and special tokens embedded, for llama.cpp. The base is reloaded in 16-bit "
        "(also after QLoRA), the template round trip is checked before and after writing, and an existing "
        "output folder is never overwritten.",
        epilog="examples:\n  thinktune export runs/my-run --format merged\n"
        "  thinktune export runs/my-run --format ollama --out my-model && cd my-model && "
        "ollama create my-model -f Modelfile\n  thinktune export runs/my-run --format gguf --gguf-type q8_0",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_verbose(p)
    p.add_argument(
        "args",
        nargs="+",
        metavar="RUN_DIR | section.key=value",
        help="a run folder written by thinktune train, then overrides of its generation.* settings (the sampling "
        "a Modelfile or generation_config.json recommends where the model family has none of its own)",
    )
    p.add_argument("--format", required=True, choices=["merged", "ollama", "gguf"], help="what to write")
    p.add_argument("--out", help="output folder (default RUN_DIR/export/FORMAT); must not exist")
    p.add_argument(
        "--gguf-type", default="f16", choices=["f16", "q8_0"], help="GGUF tensor type (default f16)"
    )
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "bfloat16", "float16", "float32"],
        help="precision of the merge (auto: the base's 16-bit type, else bfloat16)",
    )
    return _run_export


def _run_export(args: argparse.Namespace) -> int:
    from thinktune.export import merge

    run_dir, config, overrides = split_target(args.args)
    if not run_dir or config:
        raise UsageError(
            "give a run folder (thinktune export runs/NAME --format ...) and section.key=value overrides"
        )
    plan = merge.plan_export(
        run_dir, args.format, args.out, gguf_type=args.gguf_type, dtype=args.dtype, overrides=overrides
    )
    out = merge.export(plan)
    print(f"wrote {out}")
    if args.format == "ollama":
        print(
            f"next: cd {out} && ollama create {plan.run.path.name} -f Modelfile && ollama run {plan.run.path.name}"
        )
    elif args.format == "gguf":
        print(
            f"next: llama-cli -m {out}/model-{args.gguf_type}.gguf --jinja -cnv   (or: cd {out} && ollama create NAME -f Modelfile)"
        )
    else:
        print(f"next: thinktune chat --model {out}   (or: vllm serve {out})")
    return 0


# ------------------------------------------------------------------------------------------ check-template


def add_check_template(sub) -> Callable:
    p = sub.add_parser(
        "check-template",
        help="prove that training, inference and every export render the same prompt and stop tokens",
        description="For sample conversations (single and multi-turn, with reasoning, Chinese text, and the "
        "run's validation questions) compare the prompt rendered by training's Formatter with "
        "tokenizer.apply_chat_template, the chat template a GGUF embeds (jinja2), and the Ollama Modelfile "
        "TEMPLATE (Go-template semantics), and check the stop tokens. Checks the run, and every export in "
        "RUN_DIR/export/ (or the folders given with --export). Differences are printed as unified diffs; "
        "the exit status is 1 when there are any.",
        epilog="example: thinktune check-template runs/my-run --export my-model",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_verbose(p)
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--export", action="append", metavar="DIR", help="an export folder to check (repeatable)")
    return _run_check_template


def _run_check_template(args: argparse.Namespace) -> int:
    from thinktune.export.templatecheck import check_run

    failed = False
    for what, result in check_run(args.run_dir, args.export):
        print(f"{'OK ' if result.ok else 'FAIL'} {what}\n     {result.summary()}")
        failed |= not result.ok
    return 1 if failed else 0
