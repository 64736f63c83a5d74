"""Template round trip on the three template families (tokenizers only, no weights): Formatter prompt ==
apply_chat_template == GGUF-embedded template (jinja2) == Ollama Modelfile TEMPLATE (Go semantics), with stops."""

from __future__ import annotations

import pytest

from thinktune.errors import TemplateExportError
from thinktune.export import ollama, templatecheck
from thinktune.formatting.formatter import Formatter, adds_bos

FAMILIES = ["r1_tokenizer", "r1_think_tokenizer", "qwen3_tokenizer", "smollm2_tokenizer"]


def _artefacts(fmt: Formatter):
    tok = fmt.tokenizer
    bos = adds_bos(tok)
    gguf = {
        "chat_template": fmt.chat_template,
        "bos": tok.bos_token or "",
        "eos": tok.eos_token,
        "eos_id": tok.eos_token_id,
        "eot_id": fmt.eot_id,
        "add_bos": bos,
    }
    mf = ollama.modelfile(
        fmt, source=".", runtime_adds_bos=bos, stops=[fmt.eot], parameters={"temperature": 0.6}
    )
    return gguf, mf, bos


@pytest.mark.parametrize("tokenizer_fixture", FAMILIES)
@pytest.mark.parametrize("system_prompt", [None, "你是一位严谨的医生。"])
def test_all_sources_render_the_training_prompt(request, tokenizer_fixture, system_prompt):
    fmt = Formatter(request.getfixturevalue(tokenizer_fixture), system_prompt=system_prompt)
    gguf, mf, bos = _artefacts(fmt)
    result = templatecheck.check(
        fmt, gguf=gguf, modelfile_text=mf, ollama_adds_bos=bos, generation_eos_ids=[fmt.eot_id]
    )
    assert result.ok, result.summary()
    assert len(result.sources) == 4
    assert result.cases >= len(templatecheck.SAMPLE_CONVERSATIONS)
    parsed = ollama.parse_modelfile(mf)
    assert parsed["from"] == "."
    assert ("stop", fmt.eot) in parsed["parameters"]
    assert parsed["system"] == system_prompt


def test_qwen3_thinking_switch_is_checked_both_ways(qwen3_tokenizer):
    fmt = Formatter(qwen3_tokenizer)
    gguf, mf, bos = _artefacts(fmt)
    result = templatecheck.check(fmt, gguf=gguf, modelfile_text=mf, ollama_adds_bos=bos)
    assert result.ok, result.summary()
    assert result.cases == 2 * len(
        templatecheck.SAMPLE_CONVERSATIONS
    )  # default (thinking on) and thinking off
    template = ollama.parse_modelfile(mf)["template"]
    conv = [{"role": "user", "content": "你好"}]
    off = ollama.render_ollama(template, conv, default_system=None, think=False)
    on = ollama.render_ollama(template, conv, default_system=None, think=True)
    default = ollama.render_ollama(template, conv, default_system=None)
    assert off == Formatter(qwen3_tokenizer, reasoning="drop").prompt("你好")
    assert off.endswith("<think>\n\n</think>\n\n")
    assert on == default == fmt.prompt("你好")


def test_multi_turn_history_follows_the_family(r1_tokenizer, qwen3_tokenizer, smollm2_tokenizer):
    turns = [("发热三天？", "先考虑感冒。", "多喝水。")]
    r1 = Formatter(r1_tokenizer).chat_prompt(turns, "还要注意什么？")
    qwen3 = Formatter(qwen3_tokenizer).chat_prompt(turns, "还要注意什么？")
    smol = Formatter(smollm2_tokenizer).chat_prompt(turns, "还要注意什么？")
    # R1 and Qwen3 templates drop earlier reasoning; an inline (ChatML) template keeps what it is given.
    assert "先考虑感冒" not in r1 and "多喝水。<｜end▁of▁sentence｜><｜User｜>还要注意什么？" in r1
    assert "先考虑感冒" not in qwen3 and "<|im_start|>assistant\n多喝水。<|im_end|>" in qwen3
    assert "<think>\n先考虑感冒。\n</think>\n\n多喝水。<|im_end|>" in smol
    assert Formatter(r1_tokenizer).chat_prompt([], "x") == Formatter(r1_tokenizer).prompt("x")


def test_r1_think_revision_template_opens_think(r1_think_tokenizer):
    fmt = Formatter(r1_think_tokenizer)
    template = ollama.parse_modelfile(_artefacts(fmt)[1])["template"]
    out = ollama.render_ollama(template, [{"role": "user", "content": "Q"}], default_system=None)
    assert out.endswith("<｜Assistant｜><think>\n")
    # Ollama adds BOS itself (add_bos_token), so the template must not write it again.
    assert not out.startswith(r1_think_tokenizer.bos_token)
    assert r1_think_tokenizer.bos_token + out == fmt.prompt("Q")


def test_a_changed_modelfile_is_reported_as_a_diff(smollm2_tokenizer):
    fmt = Formatter(smollm2_tokenizer)
    gguf, mf, bos = _artefacts(fmt)
    broken = mf.replace('{{ "<|im_start|>assistant\\n" }}{{ end }}', '{{ "<|im_start|>assistant" }}{{ end }}')
    assert broken != mf
    result = templatecheck.check(fmt, modelfile_text=broken)
    assert not result.ok
    assert "--- training prompt (Formatter)" in result.summary()
    assert "+++ Ollama TEMPLATE" in result.summary()
    no_stop = mf.replace(f'PARAMETER stop "{fmt.eot}"', 'PARAMETER stop "</s>"')
    result = templatecheck.check(fmt, modelfile_text=no_stop)
    assert not result.ok and any("PARAMETER stop" in p for p in result.stop_problems)


def test_a_changed_gguf_template_and_stop_ids_are_reported(r1_tokenizer):
    fmt = Formatter(r1_tokenizer)
    gguf, _, _ = _artefacts(fmt)
    gguf["chat_template"] = gguf["chat_template"].replace("{{bos_token}}", "")
    gguf["add_bos"] = False
    result = templatecheck.check(fmt, gguf=gguf, generation_eos_ids=[12345])
    assert not result.ok
    assert any("GGUF chat template" in m for m in result.mismatches)
    assert any("generation_config.json" in p for p in result.stop_problems)


def test_modelfile_parser_follows_ollama_quoting():
    text = '# c\nFROM ./m.gguf\nTEMPLATE """a\n  "b" \\n"""\nSYSTEM one line\nPARAMETER stop "<|x|>"\nPARAMETER top_k 20\n'
    parsed = ollama.parse_modelfile(text)
    assert parsed == {
        "from": "./m.gguf",
        "template": 'a\n  "b" \\n',  # backslashes are kept as written
        "system": "one line",
        "parameters": [("stop", "<|x|>"), ("top_k", "20")],
    }


def test_plain_text_template_cannot_become_an_ollama_template(smollm2_tokenizer):
    fmt = Formatter(smollm2_tokenizer, text_template="Q: {question}\nA: {answer}")
    with pytest.raises(TemplateExportError, match="plain-text template"):
        ollama.ollama_template(fmt, runtime_adds_bos=False)
