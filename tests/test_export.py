"""`thinktune export`: merge parity, generation config and model card, the Ollama Modelfile, GGUF write -> read ->
logits parity, and every refusal. Run folders are made without training (tests/_runs.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _runs import make_run, read_json, small_tokenizer
from conftest import cli
from thinktune.errors import ExportError, GGUFExportError, RunDirError
from thinktune.export import gguf, merge, ollama
from thinktune.export import gguf as gguf_export
from thinktune.formatting.formatter import Formatter, adds_bos
from thinktune.infer.session import run_tokenizer
from thinktune.rundir import RunDir

SAMPLE = "发热三天，咳嗽。What is 2 + 2?"


@pytest.fixture(scope="session")
def qwen2_run(tmp_path_factory) -> Path:
    """Qwen2 architecture, DeepSeek-R1-Distill tokenizer and template."""
    return make_run(tmp_path_factory.mktemp("qwen2-r1"), arch="qwen2", tokenizer="r1")


@pytest.fixture(scope="session")
def llama_run(tmp_path_factory) -> Path:
    """Llama architecture, SmolLM2 tokenizer and ChatML template, with a system prompt."""
    return make_run(
        tmp_path_factory.mktemp("llama-smol"), arch="llama", tokenizer="smollm2", system_prompt="你是医生。"
    )


@pytest.fixture(scope="session")
def small_tok(tmp_path_factory) -> Path:
    return small_tokenizer(tmp_path_factory.mktemp("smol2k") / "tokenizer")


@pytest.fixture(scope="session")
def llama_small_run(tmp_path_factory, small_tok) -> Path:
    """Llama with a 2k-token cut of SmolLM2's tokenizer: transformers reads its GGUF back in seconds."""
    return make_run(tmp_path_factory.mktemp("llama-2k"), arch="llama", tokenizer=small_tok, seed=3)


@pytest.fixture(scope="session")
def qwen2_small_run(tmp_path_factory, small_tok) -> Path:
    return make_run(tmp_path_factory.mktemp("qwen2-2k"), arch="qwen2", tokenizer=small_tok, seed=4)


_MERGED: dict[str, Path] = {}


def merged_fp32(run: Path) -> Path:
    """The run exported as a float32 merged folder (once per session)."""
    if str(run) not in _MERGED:
        _MERGED[str(run)] = merge.export(
            merge.plan_export(run, "merged", run.parent / "merged-fp32", dtype="float32")
        )
    return _MERGED[str(run)]


def _prompt_ids(run: Path):
    r = RunDir.open(run)
    tok = run_tokenizer(r)
    fmt = Formatter.from_config(tok, r.config().data)
    return tok(fmt.prompt(SAMPLE), add_special_tokens=False, return_tensors="pt")["input_ids"], tok, fmt


def _logits(model, ids):
    import torch

    with torch.no_grad():
        return model(ids).logits.float()


@pytest.mark.parametrize("run_name", ["qwen2_run", "llama_run"])
def test_merged_model_matches_base_plus_adapter(request, run_name):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = request.getfixturevalue(run_name)
    out = merged_fp32(run)
    ids, _, fmt = _prompt_ids(run)
    base = AutoModelForCausalLM.from_pretrained(
        RunDir.open(run).config().model.name_or_path, dtype=torch.float32
    )
    peft = PeftModel.from_pretrained(base, str(run / "adapter")).eval()
    with peft.disable_adapter():
        base_logits = _logits(peft, ids)
    adapted = _logits(peft, ids)
    merged = _logits(AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval(), ids)
    assert (adapted - base_logits).abs().max() > 1e-3, (
        "the adapter must change the model for this test to mean anything"
    )
    diff = (merged - adapted).abs().max().item()
    assert diff < 1e-4, f"merged vs base+adapter max |diff| {diff}"
    # what was written beside the weights
    assert (out / "chat_template.jinja").read_text(encoding="utf-8") == fmt.chat_template
    gen = read_json(out / "generation_config.json")
    eos = gen["eos_token_id"] if isinstance(gen["eos_token_id"], list) else [gen["eos_token_id"]]
    assert fmt.eot_id in eos
    assert read_json(out / "thinktune_export.json")["template_check"]["ok"] is True


def test_generation_config_and_model_card(qwen2_run, llama_run):
    r1 = merged_fp32(qwen2_run)
    gen = read_json(r1 / "generation_config.json")
    assert (gen["do_sample"], gen["temperature"], gen["top_p"]) == (
        True,
        0.6,
        0.95,
    )  # DeepSeek-R1 recommendation
    card = (r1 / "README.md").read_text(encoding="utf-8")
    base = RunDir.open(qwen2_run).config().model.name_or_path
    tuned = read_json(qwen2_run / "eval_tuned.json")  # written by a real `thinktune eval` of the run
    for expected in (
        base,
        "strips_reasoning",
        "`sample`",
        "2.5000 -> 1.5000",
        "| `tuned: held-out completion loss` |",  # a row from eval_tuned.json ...
        f"| {tuned['heldout_loss']['completion']['loss']:.4f} (",  # ... with its value
        "vllm serve",
    ):
        assert expected in card, expected
    smol = merged_fp32(llama_run)
    assert read_json(smol / "generation_config.json")["do_sample"] is False  # the run's own (greedy) settings
    assert "你是医生。" in (smol / "README.md").read_text(encoding="utf-8")


def test_model_card_reports_the_evaluation_numbers(qwen2_run):
    card = (merged_fp32(qwen2_run) / "README.md").read_text(encoding="utf-8")
    loss = read_json(qwen2_run / "eval_tuned.json")["heldout_loss"]["completion"]["loss"]
    assert f"{loss:.4f}" in card or str(round(loss, 4)) in card


def test_sampling_defaults_per_family(qwen3_tokenizer, qwen2_run):
    from thinktune.formatting.formatter import Formatter

    run = RunDir.open(qwen2_run)
    thinking, source = merge.sampling_defaults(Formatter(qwen3_tokenizer), run.config())
    assert thinking == {"temperature": 0.6, "top_p": 0.95, "top_k": 20} and "Qwen3" in source
    no_thinking, _ = merge.sampling_defaults(Formatter(qwen3_tokenizer, reasoning="drop"), run.config())
    assert no_thinking == {"temperature": 0.7, "top_p": 0.8, "top_k": 20}


def test_qlora_run_is_merged_into_a_16bit_base(tmp_path, small_tok):
    run = make_run(tmp_path, arch="llama", tokenizer=small_tok, load_in_4bit=True, results=False)
    out = merge.export(merge.plan_export(run, "merged"))
    assert out == run / "export" / "merged"
    config = read_json(out / "config.json")
    assert config["dtype"] == "bfloat16"
    assert "quantization_config" not in config
    info = read_json(out / "thinktune_export.json")
    assert info["dtype"] == "bfloat16"
    assert "No summary, metrics or evaluation files" in (out / "README.md").read_text(encoding="utf-8")


def test_ollama_export_modelfile_reproduces_training(llama_run):
    out = merge.export(merge.plan_export(llama_run, "ollama", llama_run.parent / "ollama", dtype="float32"))
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    text = (out / "Modelfile").read_text(encoding="utf-8")
    assert "ollama create NAME -f Modelfile" in text
    parsed = ollama.parse_modelfile(text)
    assert parsed["from"] == "."
    assert parsed["system"] == "你是医生。"
    params = dict(parsed["parameters"])
    assert params["stop"] == "<|im_end|>" and params["temperature"] == "0.0"
    assert params["num_ctx"] == "4096"  # max(4096, max_length + max_new_tokens), within the model's 4096
    r = RunDir.open(llama_run)
    fmt = Formatter.from_config(run_tokenizer(r), r.config().data)
    turns = (("发热三天？", "先考虑感冒。", "多喝水。"),)
    conv = ollama.Conversation("t", turns, "还要注意什么？")
    rendered = ollama.render_ollama(
        parsed["template"], ollama.ollama_messages(fmt, conv), default_system=parsed["system"]
    )
    assert rendered == fmt.chat_prompt(turns, "还要注意什么？")
    assert rendered.startswith("<|im_start|>system\n你是医生。<|im_end|>\n")


def _rounded_like_gguf(folder: Path, gguf_type: str):
    """The merged model with every matrix rounded as the GGUF writer stores it (f16, or q8_0 round trip)."""
    import torch
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    for p in model.parameters():
        if p.ndim != 2:
            continue
        w = p.data.numpy()
        if gguf_type == "q8_0" and w.shape[-1] % 32 == 0:
            w = dequantize(quantize(w, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0)
        else:
            w = w.astype("float16").astype("float32")
        p.data = torch.from_numpy(w.reshape(p.shape).copy())
    return model


def _gguf_parity(run: Path, gguf_type: str, tolerance: float):
    """Export `run` as GGUF, read it back with transformers and compare logits with the float32 merge."""
    import torch
    from transformers import AutoModelForCausalLM

    out = merge.export(
        merge.plan_export(run, "gguf", run.parent / f"gguf-{gguf_type}", gguf_type=gguf_type, dtype="float32")
    )
    name = f"model-{gguf_type}.gguf"
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "README.md", name, "thinktune_export.json"]
    assert ollama.parse_modelfile((out / "Modelfile").read_text(encoding="utf-8"))["from"] == f"./{name}"
    ids, tok, fmt = _prompt_ids(run)
    merged = _logits(AutoModelForCausalLM.from_pretrained(merged_fp32(run), dtype=torch.float32).eval(), ids)
    loaded = AutoModelForCausalLM.from_pretrained(out, gguf_file=name, dtype=torch.float32).eval()
    got = _logits(loaded, ids)
    diff = (got - merged).abs().max().item()
    scale = merged.abs().max().item()
    assert diff < tolerance * scale, f"{gguf_type}: max |diff| {diff:.3g} vs logit scale {scale:.3g}"
    # Stronger: the GGUF is exactly the merged model with its matrices rounded to the file's type.
    rounded = _logits(_rounded_like_gguf(merged_fp32(run), gguf_type), ids)
    exact = (got - rounded).abs().max().item()
    assert exact < 1e-4, f"GGUF vs merged model with {gguf_type}-rounded matrices: max |diff| {exact:.3g}"
    # Greedy next tokens agree wherever the merged model's top-2 margin exceeds twice that position's error (a
    # random tiny model has near ties that any rounding may flip; those prove nothing either way).
    top2 = merged.topk(2, dim=-1).values
    error = (got - merged).abs().amax(-1)
    decided = (top2[..., 0] - top2[..., 1]) > 2 * error
    assert torch.equal(got.argmax(-1)[decided], merged.argmax(-1)[decided]), "greedy next tokens differ"
    agree = (got.argmax(-1) == merged.argmax(-1)).float().mean().item()
    assert agree >= (0.95 if gguf_type == "f16" else 0.75), f"greedy agreement {agree:.2f}"
    print(
        f"{run.parent.name} {gguf_type}: max|diff| {diff:.2e} (logit scale {scale:.2f}), vs rounded {exact:.1e}, greedy agreement {agree:.2f}"
    )
    meta = gguf.read_metadata(out / name)
    assert meta["tokenizer.chat_template"] == fmt.chat_template
    assert meta["tokenizer.ggml.eot_token_id"] == fmt.eot_id
    assert meta["tokenizer.ggml.add_bos_token"] == adds_bos(tok)
    return out, name, tok


@pytest.mark.parametrize("run_name", ["llama_small_run", "qwen2_small_run"])
@pytest.mark.parametrize("gguf_type,tolerance", [("f16", 2e-2), ("q8_0", 1e-1)])
def test_gguf_write_read_logits_parity(request, run_name, gguf_type, tolerance):
    out, name, tok = _gguf_parity(request.getfixturevalue(run_name), gguf_type, tolerance)
    meta = gguf.read_metadata(out / name)
    assert meta["general.file_type"] == {"f16": 1, "q8_0": 7}[gguf_type]
    assert meta["general.architecture"] == run_name.split("_")[0]


def test_gguf_without_llama_permutation_would_fail(llama_small_run, monkeypatch, tmp_path):
    """The q/k row permutation is what makes Llama GGUFs right: without it the logits are far off."""
    import torch
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(gguf_export, "_permute", lambda w, n_head: w)
    plan = merge.plan_export(llama_small_run, "gguf", tmp_path / "unpermuted", dtype="float32")
    out = merge.export(plan)
    ids, _, _ = _prompt_ids(llama_small_run)
    merged = _logits(
        AutoModelForCausalLM.from_pretrained(merged_fp32(llama_small_run), dtype=torch.float32), ids
    )
    got = _logits(
        AutoModelForCausalLM.from_pretrained(out, gguf_file="model-f16.gguf", dtype=torch.float32), ids
    )
    assert (got - merged).abs().max().item() > 2e-2 * merged.abs().max().item()


def test_gguf_tokenizer_reads_back_identically(llama_small_run):
    from transformers import AutoTokenizer

    out = llama_small_run.parent / "gguf-f16"
    if not out.exists():
        _gguf_parity(llama_small_run, "f16", 2e-2)
    r = RunDir.open(llama_small_run)
    tok = run_tokenizer(r)
    fmt = Formatter.from_config(tok, r.config().data)
    gguf_tok = AutoTokenizer.from_pretrained(out, gguf_file="model-f16.gguf")
    multi = fmt.chat_prompt([("发热三天？", "先考虑感冒。", "多喝水。")], "还要注意什么？")
    for text in (SAMPLE, multi, "<think>\nx\n</think>\n\n答案 42", "  two  spaces\n\n\ttab"):
        assert (
            gguf_tok(text, add_special_tokens=False)["input_ids"]
            == tok(text, add_special_tokens=False)["input_ids"]
        )
    assert gguf_tok.chat_template == fmt.chat_template
    assert gguf_tok.eos_token == tok.eos_token


def test_gguf_r1_tokenizer_metadata(qwen2_run):
    out = merge.export(
        merge.plan_export(qwen2_run, "gguf", qwen2_run.parent / "gguf-r1", gguf_type="q8_0", dtype="float32")
    )
    r = RunDir.open(qwen2_run)
    tok = run_tokenizer(r)
    fmt = Formatter.from_config(tok, r.config().data)
    meta = gguf.read_metadata(out / "model-q8_0.gguf")
    assert meta["general.architecture"] == "qwen2" and meta["tokenizer.ggml.pre"] == "qwen2"
    assert meta["tokenizer.chat_template"] == fmt.chat_template
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == meta["qwen2.vocab_size"]
    assert len(meta["tokenizer.ggml.merges"]) == len(
        json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    )
    # R1's special tokens are stored as raw text with llama.cpp's token types
    assert tokens[tok.eos_token_id] == "<｜end▁of▁sentence｜>" and types[tok.eos_token_id] == 3  # CONTROL
    assert (
        tokens[tok.bos_token_id] == "<｜begin▁of▁sentence｜>" and meta["tokenizer.ggml.add_bos_token"] is True
    )
    user = tok.convert_tokens_to_ids("<｜User｜>")
    assert (
        tokens[user] == "<｜User｜>" and types[user] == 3
    )  # looks special: hidden from output like llama.cpp does
    think = tok.convert_tokens_to_ids("<think>")
    assert tokens[think] == "<think>" and types[think] == 4  # USER_DEFINED: stays visible in output
    assert tokens[100] == tok.convert_ids_to_tokens(100) and types[100] == 1
    assert meta["tokenizer.ggml.eot_token_id"] == fmt.eot_id == meta["tokenizer.ggml.eos_token_id"]


@pytest.mark.slow
def test_gguf_full_vocabulary_round_trips(llama_run, qwen2_run):
    """The real SmolLM2 (49k: model and tokenizer) and R1-Distill (151k: tokenizer) vocabularies through
    transformers' GGUF reader (slow: gguf-py parses large string arrays slowly)."""
    from transformers import AutoTokenizer

    out, name, tok = _gguf_parity(llama_run, "f16", tolerance=2e-2)
    gguf_tok = AutoTokenizer.from_pretrained(out, gguf_file=name)
    for text in (SAMPLE, "<|im_start|>user\n发热<|im_end|>\n", "<think>\nx\n</think>\n\n答案 42"):
        assert (
            gguf_tok(text, add_special_tokens=False)["input_ids"]
            == tok(text, add_special_tokens=False)["input_ids"]
        )
    out = qwen2_run.parent / "gguf-r1"
    if not out.exists():
        merge.export(merge.plan_export(qwen2_run, "gguf", out, gguf_type="q8_0", dtype="float32"))
    tok = run_tokenizer(RunDir.open(qwen2_run))
    gguf_tok = AutoTokenizer.from_pretrained(out, gguf_file="model-q8_0.gguf")
    # transformers' GGUF reader drops special tokens spelled outside the byte alphabet (R1's <｜...｜>), which
    # llama.cpp matches as raw text; plain text and <think> tags must tokenize identically.
    for text in (SAMPLE, "<think>\n推理\n</think>\n\n答案", "  two  spaces\n\n\ttab 12345"):
        assert (
            gguf_tok(text, add_special_tokens=False)["input_ids"]
            == tok(text, add_special_tokens=False)["input_ids"]
        )


# ------------------------------------------------------------------------------------------ refusals


@pytest.mark.slow
def test_refusals_before_heavy_work(tmp_path, qwen2_run, small_tok):
    with pytest.raises(
        ExportError, match="unknown export format 'onnx'; choose one of: merged, ollama, gguf"
    ):
        merge.plan_export(qwen2_run, "onnx")
    with pytest.raises(ExportError, match="unknown dtype 'int8'"):
        merge.plan_export(qwen2_run, "merged", dtype="int8")
    with pytest.raises(ExportError, match="--gguf-type 'q4_k'"):
        merge.plan_export(qwen2_run, "gguf", gguf_type="q4_k")

    no_adapter = make_run(tmp_path / "a", tokenizer=small_tok, adapter=False, results=False)
    with pytest.raises(RunDirError, match="holds no trained adapter .*no summary.json"):
        merge.plan_export(no_adapter, "merged")

    with pytest.raises(RunDirError, match="not a thinktune run folder"):
        merge.plan_export(tmp_path, "merged")

    (qwen2_run / "export" / "taken").mkdir(parents=True, exist_ok=True)
    with pytest.raises(ExportError, match="already exists; thinktune never overwrites"):
        merge.plan_export(qwen2_run, "merged", qwen2_run / "export" / "taken")

    qwen3 = make_run(tmp_path / "q3", arch="qwen3", tokenizer=small_tok, results=False)
    with pytest.raises(GGUFExportError, match="supports the llama, qwen2 architectures; .* 'qwen3'"):
        merge.plan_export(qwen3, "gguf")
    assert not (qwen3 / "export").exists()

    text_run = make_run(tmp_path / "t", arch="llama", tokenizer=small_tok, results=False)
    cfg = (text_run / "config.yaml").read_text(encoding="utf-8")
    (text_run / "config.yaml").write_text(
        cfg.replace("text_template: null", "text_template: 'Q: {question}\\nA: {answer}'"), encoding="utf-8"
    )
    for fmt in ("ollama", "gguf"):
        with pytest.raises(ExportError, match="plain-text template"):
            merge.plan_export(text_run, fmt)

    # The command line prints these as one message, exit status 2, no traceback.
    r = cli("export", str(no_adapter), "--format", "merged")
    assert r.returncode == 2 and "holds no trained adapter" in r.stderr and "Traceback" not in r.stderr
    r = cli("export", str(qwen2_run), "--format", "onnx")
    assert r.returncode == 2 and "invalid choice: 'onnx'" in r.stderr


@pytest.mark.slow
def test_check_template_cli_reports_a_tampered_export_with_a_diff(llama_small_run, capsys):
    out = llama_small_run.parent / "ollama-tampered"
    merge.export(merge.plan_export(llama_small_run, "ollama", out, dtype="float32"))
    from thinktune.cli import main

    assert main(["check-template", str(llama_small_run), "--export", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert stdout.count("OK ") == 2 and "identical; stop tokens agree" in stdout
    mf = out / "Modelfile"
    mf.write_text(
        mf.read_text(encoding="utf-8").replace("<|im_start|>user\\n", "<|im_start|>user "), encoding="utf-8"
    )
    r = cli("check-template", str(llama_small_run), "--export", str(out))
    assert r.returncode == 1
    assert "FAIL" in r.stdout and "+++ ollama-tampered/Modelfile TEMPLATE" in r.stdout
    assert "-<|im_start|>user" in r.stdout


def test_export_summary_json_is_valid(qwen2_run):
    info = json.loads((merged_fp32(qwen2_run) / "thinktune_export.json").read_text(encoding="utf-8"))
    assert info["format"] == "merged" and info["stop_tokens"] == ["<｜end▁of▁sentence｜>"]
