"""Small shared helpers: logging, seeding, atomic files, JSONL, run folders, environment facts.

Nothing here imports torch at module level, so the CLI stays fast.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import random
import re
import sys
import tempfile
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def setup_logging(verbose: bool = False) -> None:
    """Configure the root logger once (called by the CLI, never by library code)."""
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    for noisy in ("httpx", "urllib3", "filelock", "matplotlib", "PIL", "datasets", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def is_main_process() -> bool:
    """Rank 0 under accelerate/torchrun, or a plain single process."""
    return int(os.environ.get("RANK", "0")) == 0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover - numpy ships with torch
        pass
    if "torch" in sys.modules:
        import torch

        torch.manual_seed(seed)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a file so readers see the old content or the new one, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):  # numpy / torch scalars
        return o.item()
    if hasattr(o, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one line in a single write so a concurrent reader never sees a partial record."""
    line = json.dumps(record, ensure_ascii=False, default=_json_default) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    atomic_write_text(
        path, "".join(json.dumps(r, ensure_ascii=False, default=_json_default) + "\n" for r in records)
    )


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Read complete JSONL records; a last line without its newline is still being written and is skipped."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break
            if line.strip():
                yield json.loads(line)


_SLUG = re.compile(r"[^A-Za-z0-9._-]+")


def slug(text: str, max_len: int = 48) -> str:
    text = _SLUG.sub("-", text.strip()).strip("-.")
    return text[-max_len:] or "run"


def check_file_name(name: str, setting: str) -> str:
    """Refuse a name used as one file or folder name inside a run's output folder if it could write elsewhere
    (a path separator, '..', an absolute path) or hide the result (a leading dot)."""
    from thinktune.errors import ThinktuneError

    if (
        not name
        or "/" in name
        or "\\" in name
        or "\x00" in name
        or name.startswith(".")
        or Path(name).is_absolute()
    ):
        raise ThinktuneError(
            f"{setting}={name!r} must be a plain name (no '/', '\\', '..' or leading '.'): it names a folder or "
            "file inside the output folder and must not point anywhere else. Use e.g. my-run-2."
        )
    return name


def create_run_dir(output_dir: str | Path, name: str | None, default_stem: str) -> Path:
    """Create a fresh run folder; a name already in use gets a -2, -3... suffix, never reused.

    `mkdir` without exist_ok is atomic, so two processes started with the same name still get two folders.
    """
    if name:
        check_file_name(name, "train.run_name")
    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    stem = slug(name) if name else f"{slug(default_stem)}-{datetime.now():%Y%m%d-%H%M%S}"
    for i in range(1, 10_000):
        candidate = root / (stem if i == 1 else f"{stem}-{i}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise RuntimeError(f"could not create a run folder under {root}")  # pragma: no cover


def environment_info() -> dict[str, Any]:
    """Versions and device facts for env.json."""
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpu_count": os.cpu_count(),
        "time": datetime.now().astimezone().isoformat(timespec="seconds"),
        "argv": sys.argv,
    }
    from importlib import metadata

    for pkg in (
        "thinktune",
        "torch",
        "transformers",
        "trl",
        "peft",
        "accelerate",
        "datasets",
        "bitsandbytes",
        "liger-kernel",
        "flash-attn",
        "vllm",
    ):
        try:
            info[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            info[pkg] = None
    if "torch" in sys.modules or info["torch"]:
        import torch

        info["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            info["cuda"] = torch.version.cuda
            info["gpus"] = [
                {
                    "name": torch.cuda.get_device_name(i),
                    "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 2),
                }
                for i in range(torch.cuda.device_count())
            ]
            info["bf16_supported"] = torch.cuda.is_bf16_supported()
    return info


def quantiles(values: list[float], qs: Iterable[float] = (0.5, 0.9, 0.99)) -> dict[str, float]:
    """min / p50 / p90 / p99 / max / mean of a list (nearest-rank percentiles, stable across numpy versions)."""
    if not values:
        return {}
    s = sorted(values)
    out: dict[str, float] = {"min": s[0]}
    for q in qs:
        k = max(0, min(len(s) - 1, int(-(-q * len(s) // 1)) - 1))
        out[f"p{round(q * 100)}"] = s[k]
    out["max"] = s[-1]
    out["mean"] = round(sum(s) / len(s), 2)
    return out
