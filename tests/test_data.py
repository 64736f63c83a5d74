"""Data ingestion: every source format and schema, Chinese text, every bad-input class, splits."""

from __future__ import annotations

import csv
import json

import pytest

from conftest import DEMO_DATA, needs_shared
from thinktune.data.load import load_examples, split_examples
from thinktune.data.schemas import Example, detect_schema
from thinktune.errors import DataError

MED = [
    {
        "Question": "A 30-year-old has fever and neck stiffness. Diagnosis?",
        "Complex_CoT": "Okay, meningitis signs.",
        "Response": "Bacterial meningitis until proven otherwise.",
    },
    {
        "Question": "患者头痛三天，伴恶心。最可能的诊断？",
        "Complex_CoT": "好的，考虑偏头痛。",
        "Response": "偏头痛。",
    },
]


def write_json(path, rows):
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return path


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------- sources


def test_json_array(tmp_path):
    res = load_examples(str(write_json(tmp_path / "d.json", MED)))
    assert res.schema == "medical-o1" and len(res.examples) == 2
    assert res.examples[1] == Example(
        "患者头痛三天，伴恶心。最可能的诊断？", "好的，考虑偏头痛。", "偏头痛。"
    )
    assert res.examples[0].meta["row"] == 1


def test_json_file_with_one_object_per_line(tmp_path):
    res = load_examples(str(write_jsonl(tmp_path / "d.json", MED)))
    assert len(res.examples) == 2


def test_jsonl_and_utf8_bom(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in MED).encode())
    assert len(load_examples(str(p)).examples) == 2


def test_utf16_file(tmp_path):
    p = tmp_path / "d.json"
    p.write_bytes(json.dumps(MED, ensure_ascii=False).encode("utf-16"))
    assert load_examples(str(p)).examples[1].answer == "偏头痛。"


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(MED), p)
    res = load_examples(str(p))
    assert [e.answer for e in res.examples] == ["Bacterial meningitis until proven otherwise.", "偏头痛。"]


def test_csv(tmp_path):
    p = tmp_path / "d.csv"
    with open(p, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["Question", "Complex_CoT", "Response"])
        w.writeheader()
        w.writerows(MED)
        f.write('"only one cell"\n')
    res = load_examples(str(p))
    assert len(res.examples) == 2
    assert [b.row for b in res.bad_rows] == [3] and "missing 'Complex_CoT'" in res.bad_rows[0].reason


def test_hf_dataset_folder_with_config_and_sliced_split(tmp_path):
    folder = tmp_path / "hub_like"
    (folder / "en").mkdir(parents=True)
    rows = [dict(Question=f"Q{i}?", Complex_CoT=f"R{i}", Response=f"A{i}") for i in range(10)]
    write_jsonl(folder / "en" / "train.jsonl", rows)
    (folder / "README.md").write_text(
        "---\nconfigs:\n- config_name: en\n  data_files:\n  - split: train\n    path: en/train.jsonl\n---\n"
    )
    res = load_examples(str(folder), config_name="en", split="train[:4]")
    assert [e.question for e in res.examples] == ["Q0?", "Q1?", "Q2?", "Q3?"]


def test_hub_id_offline_gives_a_clear_message():
    with pytest.raises(
        DataError, match="(?s)could not load dataset 'FreedomIntelligence/medical-o1-reasoning-SFT'.*offline"
    ):
        load_examples("FreedomIntelligence/medical-o1-reasoning-SFT", config_name="en", split="train[:10]")


def test_modelscope_needs_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_modelscope(name, *a, **k):
        if name.startswith("modelscope"):
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_modelscope)
    with pytest.raises(DataError, match=r"pip install 'thinktune\[modelscope\]'"):
        load_examples("ms:FreedomIntelligence/medical-o1-reasoning-SFT")


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_examples(str(tmp_path / "nope.jsonl"))
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(DataError, match="unsupported file type '.txt'"):
        load_examples(str(tmp_path / "d.txt"))
    with pytest.raises(DataError, match="neither an existing file nor a dataset id"):
        load_examples("not a source")


def test_bundled_sample_loads():
    res = load_examples("sample")
    assert res.schema == "medical-o1" and len(res.examples) >= 40 and not res.bad_rows
    assert any("\u4e00" <= ch <= "\u9fff" for e in res.examples for ch in e.question), "sample has Chinese"
    assert all(e.reasoning and e.answer for e in res.examples)


def test_bundled_sample_by_language():
    def han(e):
        return any("\u4e00" <= ch <= "\u9fff" for ch in e.question + e.reasoning + e.answer)

    whole, en, zh = (load_examples(s).examples for s in ("sample", "sample:en", "sample:zh"))
    assert len(en) + len(zh) == len(whole) and en and zh
    assert not any(han(e) for e in en) and all(han(e) for e in zh)
    assert {e.question for e in en} | {e.question for e in zh} == {e.question for e in whole}
    with pytest.raises(
        DataError, match="sample:fr.*use sample, sample:en, sample:zh, sample:mcq or sample:open"
    ):
        load_examples("sample:fr")


def test_bundled_verifiable_problems():
    from thinktune.evals.problems import load_problems

    mcq, open_ = load_problems("sample:mcq"), load_problems("sample:open")
    assert len(mcq.questions) == 160 and not mcq.bad_rows and all(q.gradable for q in mcq.questions)
    assert len(open_.questions) == 40 and not open_.bad_rows and all(q.open_ended for q in open_.questions)
    assert any(q.aliases for q in open_.questions)
    assert "The answer is X" in mcq.questions[0].message  # rendered as eval renders a benchmark question


@needs_shared(DEMO_DATA)
def test_shared_demo_data_loads_198_examples():
    res = load_examples(str(DEMO_DATA), keep=("options", "answer_idx"))
    assert res.schema == "medical-o1"
    assert len(res.examples) == 198 and not res.bad_rows and not res.duplicates
    assert res.examples[0].meta["answer_idx"] in res.examples[0].meta["options"]


# ---------------------------------------------------------------------------------------------- schemas


def test_alpaca_with_inline_think_and_input(tmp_path):
    rows = [
        {
            "instruction": "Diagnose:",
            "input": "fever, rash",
            "output": "<think>\nMeasles?\n</think>\n\nMeasles.",
        },
        {"instruction": "Say hi", "input": "", "output": "Hi", "system": "Be brief."},
    ]
    res = load_examples(str(write_json(tmp_path / "a.json", rows)))
    assert res.schema == "alpaca"
    assert res.examples[0] == Example("Diagnose:\n\nfever, rash", "Measles?", "Measles.")
    assert res.examples[1] == Example("Say hi", "", "Hi", system="Be brief.")


def test_messages_openai_sharegpt_and_reasoning_content(tmp_path):
    rows = [
        {
            "messages": [
                {"role": "system", "content": "你是医生。"},
                {"role": "user", "content": "头痛？"},
                {"role": "assistant", "content": "<think>考虑偏头痛</think>偏头痛。"},
            ]
        },
        {"conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A."}]},
        {
            "messages": [
                {"role": "user", "content": "Q2?"},
                {"role": "assistant", "content": "A2.", "reasoning_content": "because"},
            ]
        },
        {"messages": [{"role": "user", "content": "Q3?"}, {"role": "assistant", "content": "R3</think>A3."}]},
    ]
    p = write_jsonl(tmp_path / "m.jsonl", rows[:1] + rows[2:])
    res = load_examples(str(p))
    assert res.schema == "messages"
    assert res.examples[0] == Example("头痛？", "考虑偏头痛", "偏头痛。", system="你是医生。")
    assert res.examples[1] == Example("Q2?", "because", "A2.")
    assert res.examples[2] == Example("Q3?", "R3", "A3."), "a closing tag alone: text before it is reasoning"
    share = load_examples(str(write_jsonl(tmp_path / "s.jsonl", rows[1:2])))
    assert share.examples[0] == Example("Q?", "", "A.")


def test_explicit_column_mapping(tmp_path):
    rows = [{"q": "Q?", "cot": "R", "a": "A", "sys": "S"}, {"q": "Q2?", "a": "<think>R2</think>A2"}]
    res = load_examples(
        str(write_jsonl(tmp_path / "c.jsonl", rows[:1])),
        columns={"question": "q", "reasoning": "cot", "answer": "a", "system": "sys"},
    )
    assert res.schema == "columns" and res.examples[0] == Example("Q?", "R", "A", "S")
    res2 = load_examples(
        str(write_jsonl(tmp_path / "c2.jsonl", rows[1:])),
        schema="columns",
        columns={"question": "q", "answer": "a"},
    )
    assert res2.examples[0] == Example("Q2?", "R2", "A2")


def test_schema_detection_messages():
    assert detect_schema(["Question", "Complex_CoT", "Response", "question", "options"]) == "medical-o1"
    with pytest.raises(DataError, match="(?s)fit several schemas.*data.schema="):
        detect_schema(["instruction", "output", "messages"])
    with pytest.raises(
        DataError, match=r"(?s)cannot tell the schema from the columns \['foo'\].*data.columns"
    ):
        detect_schema(["foo"])


def test_a_run_folders_own_data_files_load_back(tmp_path):
    """runs/<name>/data/*.jsonl (question, reasoning, answer, system, meta) are valid thinktune input again."""
    from thinktune.rundir import save_examples

    examples = [Example("Q1?", "R1", "A1"), Example("Q2?", "R2", "A2", "S2")]
    path = tmp_path / "validation.jsonl"
    save_examples(path, examples)
    res = load_examples(str(path))
    assert res.schema == "columns" and res.examples == examples
    assert [e.system for e in res.examples] == [None, "S2"]


def test_system_prompt_default_applies_only_without_own(tmp_path):
    rows = [{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d", "system": "own"}]
    res = load_examples(str(write_json(tmp_path / "a.json", rows)), system_prompt="default")
    assert [e.system for e in res.examples] == ["default", "own"]


# ---------------------------------------------------------------------------------------------- bad rows


BAD_CASES = [
    ('{"Question": "Q", "Complex_CoT": "R"}', "missing 'Response'"),
    ('{"Question": "Q", "Complex_CoT": "R", "Response": 5}', "'Response' is int, expected text"),
    ('{"Question": "Q", "Complex_CoT": "R", "Response": "   "}', "empty answer"),
    ('{"Question": "", "Complex_CoT": "R", "Response": "A"}', "empty question"),
    (
        '{"Question": "Q", "Complex_CoT": "R", "Response": "<think>never closed"}',
        "'<think>' is opened but never closed",
    ),
    ('{"Question": "Q", "Complex_CoT": "R", "Response": "A"', "malformed JSON"),
    ("[1, 2]", "expected a JSON object, got list"),
]


@pytest.mark.parametrize(("line", "reason"), BAD_CASES)
def test_each_bad_row_class_is_reported_with_file_and_row(tmp_path, line, reason):
    good = json.dumps(MED[0])
    p = tmp_path / "bad.jsonl"
    p.write_text(f"{good}\n{line}\n{json.dumps(MED[1], ensure_ascii=False)}\n", encoding="utf-8")
    res = load_examples(str(p))
    assert len(res.examples) == 2, "the run goes on with the good rows"
    assert len(res.bad_rows) == 1
    bad = res.bad_rows[0]
    assert bad.row == 2 and reason in bad.reason and str(p) in str(bad)
    with pytest.raises(DataError) as e:
        load_examples(str(p), on_bad_row="error")
    assert (
        f"{p}, row 2: " in str(e.value) and reason in str(e.value) and "data.on_bad_row=skip" in str(e.value)
    )


def test_undecodable_bytes_are_reported_per_row(tmp_path):
    p = tmp_path / "latin.jsonl"
    good = json.dumps(MED[0]).encode()
    bad = '{"Question": "caf\u00e9?", "Complex_CoT": "R", "Response": "A"}'.encode("latin-1")
    p.write_bytes(good + b"\n" + bad + b"\n")
    res = load_examples(str(p))
    assert len(res.examples) == 1
    assert res.bad_rows[0].row == 2 and "undecodable bytes" in res.bad_rows[0].reason


def test_undecodable_bytes_in_json_array(tmp_path):
    p = tmp_path / "arr.json"
    text = json.dumps(MED).encode()
    p.write_bytes(text.replace(b"fever", b"f\xe9ver"))
    res = load_examples(str(p))
    assert [b.row for b in res.bad_rows] == [1] and "undecodable" in res.bad_rows[0].reason


def test_broken_json_array_names_line_and_column(tmp_path):
    p = tmp_path / "broken.json"
    p.write_text('[\n{"Question": "Q", "Complex_CoT": "R", "Response": "A"},\n{"Question": }\n]')
    with pytest.raises(DataError, match=r"broken.json: not valid JSON .* line 3, column 14"):
        load_examples(str(p))


def test_duplicates_are_removed_and_counted(tmp_path):
    p = write_json(tmp_path / "d.json", [MED[0], MED[1], MED[0], MED[0]])
    res = load_examples(str(p), on_bad_row="error")  # duplicates never stop a run
    assert len(res.examples) == 2
    assert res.duplicates == [(3, 1), (4, 1)]
    assert res.summary()["duplicates_removed"] == 2


def test_multi_turn_rows_are_refused_with_the_reason(tmp_path):
    rows = [
        {
            "messages": [
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"},
                {"role": "user", "content": "c"},
                {"role": "assistant", "content": "d"},
            ]
        },
        {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]},
    ]
    res = load_examples(str(write_jsonl(tmp_path / "m.jsonl", rows)))
    assert "2 user and 2 assistant turns" in res.bad_rows[0].reason and len(res.examples) == 1


def test_all_rows_bad_is_an_error(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"Question": "Q", "Complex_CoT": "R", "Response": ""}\n')
    with pytest.raises(DataError, match="(?s)no usable examples.*empty answer"):
        load_examples(str(p))


# ---------------------------------------------------------------------------------------------- splits


def _examples(n):
    return [Example(f"Q{i}", f"R{i}", f"A{i}") for i in range(n)]


def test_split_is_seeded_and_deterministic():
    a = split_examples(_examples(50), val_size=0.2, seed=7)
    b = split_examples(_examples(50), val_size=0.2, seed=7)
    c = split_examples(_examples(50), val_size=0.2, seed=8)
    assert a == b and a != c
    train, val = a
    assert len(val) == 10 and len(train) == 40 and not set(train) & set(val)


def test_split_count_max_examples_and_no_validation():
    train, val = split_examples(_examples(50), val_size=5, seed=1, max_examples=20)
    assert len(train) == 15 and len(val) == 5
    train, val = split_examples(_examples(10), val_size=0.0, seed=1)
    assert len(train) == 10 and val == []
    train, val = split_examples(_examples(10), val_size=0.1, seed=1, shuffle=False)
    assert val == [Example("Q0", "R0", "A0")]
    with pytest.raises(DataError, match="leaves no training examples"):
        split_examples(_examples(5), val_size=5, seed=1)


def test_the_sample_keeps_the_real_data_shape(qwen3_tokenizer):
    """The bundled sample stands for medical-o1-reasoning-SFT: lengths (Qwen2 tokens) within bands around the real
    data's (median reasoning 475, answer 122, question 38; src/thinktune/data/sample/README.md), no row below the
    floors, several paragraphs of reasoning, both languages, and no single opening formula."""
    from collections import Counter

    rows = load_examples("sample").examples

    def tokens(text: str) -> int:
        return len(qwen3_tokenizer(text, add_special_tokens=False)["input_ids"])

    def quantile(values: list[int], q: float) -> int:
        s = sorted(values)
        return s[min(len(s) - 1, int(q * len(s)))]

    spans = {
        "question": [tokens(e.question) for e in rows],
        "reasoning": [tokens(e.reasoning) for e in rows],
        "answer": [tokens(e.answer) for e in rows],
    }
    bands = {  # (p10 at least, median range, p90 at most); the real data: 20/38/79, 388/475/603, 70/122/241
        "question": (12, (28, 55), 110),
        "reasoning": (340, (420, 540), 680),
        "answer": (50, (95, 160), 280),
    }
    for span, (p10_min, (mid_lo, mid_hi), p90_max) in bands.items():
        values = spans[span]
        assert quantile(values, 0.1) >= p10_min, span
        assert mid_lo <= quantile(values, 0.5) <= mid_hi, span
        assert quantile(values, 0.9) <= p90_max, span
    assert min(spans["reasoning"]) >= 300 and min(spans["answer"]) >= 20  # floors: no toy rows
    assert all(e.reasoning.count("\n\n") >= 3 for e in rows)  # several paragraphs, not one
    english = [e for e in rows if e.question.isascii()]
    chinese = [e for e in rows if not e.question.isascii()]
    assert len(english) >= 60 and len(chinese) >= 15
    # the real data's voice (most rows open "Alright, ..." or "Okay, ..."), but no one formula: no three-word
    # opening on more than 15% of the rows (the real data's most common one is on 14%)
    openings = Counter(" ".join(e.reasoning.split()[:3]) for e in english)
    assert openings.most_common(1)[0][1] <= 0.15 * len(english)
    assert sum(e.reasoning.startswith(("Alright,", "Okay,")) for e in english) >= 0.6 * len(english)
