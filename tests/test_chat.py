"""`thinktune chat`: the streaming reasoning splitter, the session (history, /commands, thinking switch),
non-interactive --prompt/stdin/--json, and the interactive mode for real in a pseudo-terminal."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from _export_helpers import make_run
from conftest import ROOT, cli
from thinktune.chat import ChatSession, ReasoningSplitter
from thinktune.config import GenerationConfig


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
    from thinktune.chat import load_session

    return load_session(None, str(model_dir), None, gen, device="cpu")


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
    session = ChatSession(None, None, _formatter(tiny_qwen2_dir), GenerationConfig())
    keep, message = session.command("/think off")
    assert keep and "no thinking switch (enable_thinking)" in message


def _formatter(model_dir: Path):
    from transformers import AutoTokenizer

    from thinktune.formatting import Formatter

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


def test_refuses_run_and_model_together(think_run):
    r = cli("chat", str(think_run), "--model", "x", "--prompt", "hi")
    assert r.returncode == 2 and "either a run folder" in r.stderr and "Traceback" not in r.stderr


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
