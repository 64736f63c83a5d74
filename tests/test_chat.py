"""`thinktune chat`: the streaming reasoning splitter, the session (history, /commands, thinking switch),
non-interactive --prompt/stdin/--json, and the interactive mode for real in a pseudo-terminal."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from _runs import make_run
from conftest import ROOT, cli
from thinktune.config import Config
from thinktune.data.reasoning import ReasoningSplitter
from thinktune.infer.chat import ChatSession
from thinktune.infer.session import Session


def _split(chunks, opens=False):
    s = ReasoningSplitter(opens)
    pieces = [p for c in chunks for p in s.feed(c)] + s.finish()
    joined: dict[str, str] = {"reasoning": "", "answer": ""}
    for kind, text in pieces:
        joined[kind] += text
    return joined, pieces


def test_splitter_handles_tags_cut_across_chunks():
    joined, pieces = _split(["<th", "ink>\nstep one", " step two</thi", "nk>\n\nThe answer", " is 4."])
    assert joined == {"reasoning": "\nstep one step two", "answer": "The answer is 4."}
    assert [k for k, _ in pieces].count("reasoning") >= 2  # streamed, not held back until the end


def test_splitter_prompt_opened_think_unclosed_and_no_think():
    assert _split(["thinking...", "</think>ok"], opens=True)[0] == {
        "reasoning": "thinking...",
        "answer": "ok",
    }
    assert _split(["still thinking <", "/thi"], opens=True)[0] == {
        "reasoning": "still thinking </thi",
        "answer": "",
    }
    assert _split(["  just ", "an answer"])[0] == {"reasoning": "", "answer": "just an answer"}
    assert _split(["<"])[0] == {"reasoning": "", "answer": "<"}


@pytest.fixture(scope="session")
def think_run(tmp_path_factory) -> Path:
    """R1-Distill's <think>-prefilled revision: everything a random model says is streamed as reasoning."""
    return make_run(
        tmp_path_factory.mktemp("chat-r1think"), arch="qwen2", tokenizer="r1-think", results=False
    )


def _session(model_dir: Path, **gen) -> ChatSession:
    from thinktune.infer.chat import load_session

    return load_session(
        None, str(model_dir), None, [f"generation.{k}={v}" for k, v in gen.items()], device="cpu"
    )


def test_session_history_commands_and_thinking_switch(tiny_qwen3_dir):
    session = _session(tiny_qwen3_dir, max_new_tokens=6)
    assert session.can_toggle_thinking
    pieces: list[tuple[str, str]] = []
    reply = session.reply("发热三天？", lambda kind, text: pieces.append((kind, text)))
    assert reply.new_tokens >= 1 and pieces and "".join(t for _, t in pieces).strip()
    assert session.history == [("发热三天？", reply.reasoning, reply.answer)]
    second = session.prompt("还要注意什么？")
    assert second.startswith(reply.prompt) and second.endswith(
        "<|im_start|>user\n还要注意什么？<|im_end|>\n<|im_start|>assistant\n"
    )
    assert session.command("/think off") == (True, "thinking off")
    assert session.prompt("x").endswith("<think>\n\n</think>\n\n")
    session.command("/think on")
    assert not session.prompt("x").endswith("</think>\n\n")
    assert session.command("/system 你是医生。")[1] == "system prompt: '你是医生。'"
    assert session.prompt("x").startswith("<|im_start|>system\n你是医生。<|im_end|>")
    assert session.command("/reset") == (True, "conversation cleared") and session.history == []
    assert session.command("/nope")[1].startswith("unknown command '/nope'")
    assert session.command("/exit")[0] is False


def test_think_command_explains_where_the_template_has_no_switch(tiny_qwen2_dir):
    fmt = _formatter(tiny_qwen2_dir)
    session = ChatSession(Session(Config(), fmt.tokenizer, fmt, str(tiny_qwen2_dir), None))
    keep, message = session.command("/think off")
    assert keep and "no thinking switch (enable_thinking)" in message


def _formatter(model_dir: Path):
    from transformers import AutoTokenizer

    from thinktune.formatting.formatter import Formatter

    return Formatter(AutoTokenizer.from_pretrained(model_dir))


def test_prompt_and_stdin_modes_print_reasoning_and_answer_separately(think_run, capsys, monkeypatch):
    import io

    from thinktune.cli import main

    argv = ["chat", str(think_run), "--prompt", "What is 2 + 2?", "--prompt", "And 3 + 3?", "--json"]
    assert main([*argv, "--max-new-tokens", "5"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [rec["question"] for rec in records] == ["What is 2 + 2?", "And 3 + 3?"]
    assert records[0]["prompt"].endswith("<｜User｜>What is 2 + 2?<｜Assistant｜><think>\n")
    assert "<｜User｜>And 3 + 3?<｜Assistant｜><think>\n" in records[1]["prompt"]  # one conversation
    assert records[0]["reasoning"] and isinstance(records[0]["stopped"], bool)

    monkeypatch.setattr(sys, "stdin", io.StringIO("发热三天？\n"))
    assert main(["chat", str(think_run), "--max-new-tokens", "5"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("=== reasoning ===\n") and "\n=== answer ===\n" in out
    monkeypatch.setattr(sys, "stdin", io.StringIO("发热三天？\n"))
    assert main(["chat", str(think_run), "--max-new-tokens", "5", "--hide-reasoning"]) == 0
    assert capsys.readouterr().out.startswith("=== answer ===\n")


@pytest.mark.slow
def test_refuses_run_and_model_together(think_run):
    r = cli("chat", str(think_run), "--model", "x", "--prompt", "hi")
    assert r.returncode == 2 and "either a run folder" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_interactive_chat_in_a_pseudo_terminal(think_run):
    import pexpect

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TERM": "xterm"}
    env.pop("NO_COLOR", None)
    child = pexpect.spawn(
        sys.executable,
        ["-m", "thinktune", "chat", str(think_run), "--max-new-tokens", "8"],
        env=env,
        encoding="utf-8",
        timeout=180,
        dimensions=(40, 200),
    )
    try:
        child.expect("thinktune chat: template family strips_reasoning")
        child.expect(">>> ")
        child.sendline("What is 2 + 2?")
        child.expect(r"\x1b\[2m\[reasoning\]")  # reasoning is streamed dimmed
        child.expect(r"\[\d+ tokens, [\d.]+ tok/s")
        child.expect(">>> ")
        child.sendline("/think off")
        child.expect("no thinking switch")
        child.sendline("/system Be brief.")
        child.expect("system prompt: 'Be brief.'")
        child.sendline("/reset")
        child.expect("conversation cleared")
        child.sendline("/help")
        child.expect("/think on\\|off")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


# ------------------------------------------------------------------------------------------ one path with eval


class _Loaded(Exception):
    """Raised by the intercepted loader once it has seen what it was asked to load."""


@pytest.fixture
def qlora_run(tmp_path):
    return make_run(tmp_path, arch="qwen2", tokenizer="r1", load_in_4bit=True, results=False)


def _intercept_load(monkeypatch) -> list[dict]:
    """Pretend to be on a CUDA machine with bitsandbytes and capture every model load request (no weights load)."""
    from thinktune.infer import session as session_module
    from thinktune.models import precision, qlora

    seen: list[dict] = []

    def fake_load(cfg, *, device=None, precision=None, attention=None, quantization=None):
        seen.append({"device": device, "quantization": quantization, "precision": precision})
        raise _Loaded

    monkeypatch.setattr(session_module, "default_device", lambda: "cuda")
    monkeypatch.setattr(session_module, "load_model", fake_load)
    monkeypatch.setattr(qlora, "require_qlora_support", lambda: None)
    monkeypatch.setattr(precision, "cuda_bf16_supported", lambda: True)
    return seen


def test_chat_on_a_qlora_run_loads_the_4bit_base_exactly_as_eval_does(qlora_run, monkeypatch):
    """Regression: chat used to load a QLoRA run's base in 16-bit (~15 GB for the 7B recipe on an 8 GB card)."""
    from thinktune.infer.chat import load_session
    from thinktune.infer.session import open_run

    seen = _intercept_load(monkeypatch)
    with pytest.raises(_Loaded):
        open_run(qlora_run).model()  # what eval and compare load
    with pytest.raises(_Loaded):
        load_session(str(qlora_run), None, None)  # what chat loads
    eval_load, chat_load = seen
    assert eval_load["quantization"] is not None and chat_load["quantization"] is not None
    assert chat_load["quantization"].to_dict() == eval_load["quantization"].to_dict()
    q = chat_load["quantization"].to_dict()
    assert q["load_in_4bit"] and q["bnb_4bit_quant_type"] == "nf4" and q["bnb_4bit_quant_storage"] == "uint8"
    assert chat_load["device"] == eval_load["device"] == "cuda"


def test_chat_samples_with_the_same_top_k_rule_and_seed_as_eval(think_run, monkeypatch):
    """Regression: chat passed top_k=None when sampling, which lets a model's own generation_config top-k
    (Qwen3: 20) back in, while eval passes 0; its seed rule differed too."""
    from transformers import GenerationMixin

    from thinktune.infer.chat import load_session
    from thinktune.infer.session import open_run

    calls: list[dict] = []
    real = GenerationMixin.generate

    def spy(self, *args, **kwargs):
        import torch

        calls.append(
            {
                **{k: v for k, v in kwargs.items() if k not in ("input_ids", "attention_mask", "streamer")},
                "rng": torch.random.get_rng_state().sum().item(),
            }
        )
        return real(self, *args, **kwargs)

    monkeypatch.setattr(GenerationMixin, "generate", spy)
    sampling = [
        "generation.temperature=0.7",
        "generation.top_p=0.9",
        "generation.seed=3",
        "generation.max_new_tokens=4",
    ]
    session = open_run(think_run, sampling)
    session.generate([session.formatter.prompt("hi")], adapter=True)
    chat = load_session(str(think_run), None, None, sampling)
    chat.reply("hi")
    eval_call, chat_call = calls
    assert eval_call["do_sample"] is True and eval_call["top_k"] == 0
    assert chat_call == eval_call  # every decoding argument, and the random state it starts from
