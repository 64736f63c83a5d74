"""What the form shows beside it: the data doctor (what the loss will see) and the memory plan, from the same
functions `thinktune inspect-data` and `thinktune plan` call, returned as data for the page to draw.

Both need only a tokenizer and config.json (no weights); the tokenizer is kept between calls so that changing
`max_length` on the form answers in a moment. One analysis runs at a time (a lock)."""

from __future__ import annotations

import threading
from typing import Any

from thinktune.config import Config

_lock = threading.Lock()
_tokenizers: dict[tuple, Any] = {}

#: memory budgets the page offers (label, bytes), next to the detected GPU when there is one
GPUS = [
    ("8 GB (RTX 4060 laptop, 3070)", 8 * 10**9),
    ("12 GB (RTX 3060, 4070)", 12 * 10**9),
    ("16 GB (RTX 4080, T4)", 16 * 10**9),
    ("24 GB (RTX 3090, 4090, A10)", 24 * 10**9),
    ("40 GB (A100 40GB)", 40 * 10**9),
    ("80 GB (A100 80GB, H100)", 80 * 10**9),
]


def _tokenizer(cfg: Config) -> Any:
    from thinktune.models.loading import load_tokenizer

    m = cfg.model
    key = (m.name_or_path, m.tokenizer, m.revision, m.chat_template, m.trust_remote_code, m.gguf_file)
    if key not in _tokenizers:
        if len(_tokenizers) > 4:
            _tokenizers.clear()
        _tokenizers[key] = load_tokenizer(m)
    return _tokenizers[key]


def histogram(values: list[int], upper: int, bins: int = 32) -> dict[str, Any]:
    """Counts of `values` in `bins` equal bins from 0 to the longest value or `upper` (max_length), whichever is
    larger, so the max_length line falls where it cuts."""
    if not values:
        return {"edges": [], "counts": []}
    top = max(max(values), upper) + 1
    width = max(1, -(-top // bins))
    counts = [0] * (-(-top // width))
    for v in values:
        counts[v // width] += 1
    return {"edges": [i * width for i in range(len(counts) + 1)], "counts": counts}


def data_doctor(cfg: Config, example: int = 0) -> dict[str, Any]:
    """The data doctor's report for `cfg`, the length histogram as numbers, and one example as the model sees it
    (the prompt, and the trained completion apart)."""
    from thinktune.formatting import doctor
    from thinktune.formatting.formatter import Formatter

    d = cfg.data
    with _lock:
        tok = _tokenizer(cfg)
        fmt = Formatter.from_config(tok, d)
        seen = doctor.examine(fmt, d, tokenizer_name=cfg.model.tokenizer or cfg.model.name_or_path)
        encoded, report = seen.encoded, seen.report
        shown = None
        if encoded:
            enc = encoded[max(0, min(example, len(encoded) - 1))]
            shown = {
                "index": encoded.index(enc),
                "row": enc.example.meta.get("row"),
                "lengths": enc.lengths,
                "prompt": tok.decode(enc.input_ids[: enc.prompt_len]),
                "reasoning": tok.decode(enc.input_ids[enc.prompt_len : enc.answer_start]),
                "answer": tok.decode(enc.input_ids[enc.answer_start :]),
                "end_of_turn": fmt.eot,
                "end_of_turn_trained": enc.labels()[-1] == fmt.eot_id,
                "cut": len(enc.input_ids) > d.max_length,
            }
    totals = [e.lengths["total"] for e in encoded]
    return {
        "report": report,
        "histogram": histogram(totals, d.max_length),
        "max_length": d.max_length,
        "over": sum(t > d.max_length for t in totals),
        "examples": len(encoded),
        "example": shown,
    }


def memory_plan(cfg: Config, vram_bytes: int) -> dict[str, Any]:
    """`thinktune plan --json` for `cfg` and a budget, keeping the form's max_length."""
    from thinktune.plan.report import build_plan, plan_to_json

    with _lock:
        plan = build_plan(cfg, vram_bytes, bf16_supported=True, fix_length=True)
    return plan_to_json(plan)


def gpu_choices() -> list[dict[str, Any]]:
    from thinktune.plan.recommend import detected_gpu

    out = []
    try:
        gpu = detected_gpu()
    except Exception:
        gpu = None
    if gpu is not None:
        out.append({"label": f"{gpu[0]} (this machine)", "bytes": gpu[1]})
    return out + [{"label": label, "bytes": n} for label, n in GPUS]
