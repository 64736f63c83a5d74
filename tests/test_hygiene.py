"""Resource hygiene: repeated `thinktune eval` calls in one process do not keep models alive or grow memory;
failed atomic writes leave no temporary file; the hygiene plugin (tests/_hygiene_plugin.py, on for every test)
really sees leaked children and leftover temporaries."""

from __future__ import annotations

import gc
import os
import subprocess
import sys

import psutil
import pytest

import _hygiene_plugin
from _runs import make_run
from _train_helpers import build_tiny_chatml, single_thread
from thinktune.cli import main
from thinktune.utils import atomic_write_text, write_json


def _live_modules() -> int:
    import torch

    gc.collect()
    return sum(
        1
        for o in gc.get_objects()
        # type(o), not o.__class__: touching some module objects warns
        if type(o).__name__.endswith("ForCausalLM") and isinstance(o, torch.nn.Module)
    )


def test_repeated_eval_calls_do_not_keep_models_or_grow_memory(tmp_path):
    # The 400-token vocabulary of the training tests' tiny model keeps each eval call well under a second.
    tokenizer = build_tiny_chatml(tmp_path / "tiny").parent / "tokenizer"
    run = make_run(tmp_path, arch="llama", tokenizer=tokenizer, n_val=2, max_new_tokens=4, with_eval=False)
    me = psutil.Process(os.getpid())
    alive_before = _live_modules()

    def one_eval(i: int) -> None:
        with single_thread():
            assert main(["eval", str(run), "--limit", "2", "--name", f"m{i}"]) == 0

    for i in range(2):  # warm-up: imports, allocator pools, tokenizer caches
        one_eval(i)
    gc.collect()
    rss_warm = me.memory_info().rss
    for i in range(2, 5):
        one_eval(i)
    gc.collect()
    growth = me.memory_info().rss - rss_warm
    model_bytes = sum(f.stat().st_size for f in (tmp_path / "base").glob("*.safetensors"))
    assert _live_modules() == alive_before, "an eval call left its model alive"
    # Tolerant: three more calls may move the allocator's high-water mark, not add a model's worth each time.
    assert growth < 64 * 2**20 + 3 * model_bytes, f"RSS grew {growth / 2**20:.1f} MiB over 3 eval calls"


def test_a_failed_atomic_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    write_json(target, {"status": "running"})

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    monkeypatch.undo()
    assert target.read_text().strip().startswith("{")  # the old content, whole
    assert _hygiene_plugin.leftover_files(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_hygiene_plugin_sees_leftover_temporaries(tmp_path):
    (tmp_path / "run" / "adapter").mkdir(parents=True)
    (tmp_path / "run" / ".summary.json.abc123.tmp").write_text("{")
    (tmp_path / "run" / ".adapter.partial").mkdir()
    found = {p.name for p in _hygiene_plugin.leftover_files(tmp_path)}
    assert found == {".summary.json.abc123.tmp", ".adapter.partial"}
    for p in _hygiene_plugin.leftover_files(tmp_path):  # clean up, or the plugin fails the session
        p.rmdir() if p.is_dir() else p.unlink()


@pytest.mark.slow
def test_hygiene_plugin_sees_a_leaked_child_process():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert proc.pid in {p.pid for p in _hygiene_plugin._children()}
    finally:
        proc.kill()
        proc.wait()
    assert proc.pid not in {p.pid for p in _hygiene_plugin._children()}
