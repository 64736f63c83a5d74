"""Safe loading (no model code or pickles run unless the config allows it), paths that cannot escape the output
folder, and concurrency: same-named runs never share a folder; metrics.jsonl is never read half-written."""

from __future__ import annotations

import json
import multiprocessing
import pickle
import threading
import time
from pathlib import Path

import pytest

from _train_helpers import arithmetic_rows, build_tiny_chatml, tiny_sections, write_config, write_rows
from thinktune import cli
from thinktune.config import ModelConfig
from thinktune.configfile import from_dict
from thinktune.errors import ModelLoadError, ThinktuneError
from thinktune.models.loading import load_adapter, load_model, load_tokenizer
from thinktune.report.files import load_run_files
from thinktune.rundir import RunDir
from thinktune.train.preflight import preflight
from thinktune.utils import append_jsonl, create_run_dir, read_jsonl


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_chatml(tmp_path_factory.mktemp("safety") / "tiny")


class _Plant:
    """Unpickling this creates a file: the proof that a pickle ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


# ------------------------------------------------------------------------------------------ remote code


@pytest.fixture
def remote_code_model(tmp_path) -> tuple[Path, Path]:
    folder = tmp_path / "custom-model"
    folder.mkdir()
    marker = tmp_path / "CODE_RAN"
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "evilcustom",
                "architectures": ["EvilForCausalLM"],
                "auto_map": {
                    "AutoConfig": "configuration_evil.EvilConfig",
                    "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM",
                },
            }
        )
    )
    (folder / "configuration_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    (folder / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    return folder, marker


def test_model_with_custom_code_is_refused_by_name_unless_trusted(remote_code_model, tmp_path):
    folder, marker = remote_code_model
    cfg = from_dict({"model": {"name_or_path": str(folder)}, "data": {"source": "sample"}})
    assert cfg.model.trust_remote_code is False  # the default
    for attempt in (
        lambda: preflight(cfg),
        lambda: load_model(cfg.model, device="cpu"),
        lambda: load_tokenizer(cfg.model),
    ):
        with pytest.raises(
            ModelLoadError, match=r"ships its own Python code.*model.trust_remote_code=true"
        ) as err:
            attempt()
        assert "configuration_evil.py" in str(err.value)
    assert not marker.exists(), "the model's code ran without trust_remote_code"


def test_custom_code_refusal_through_the_cli(remote_code_model, tmp_path, capsys):
    folder, marker = remote_code_model
    sections = {
        "model": {"name_or_path": str(folder)},
        "data": {"source": "sample"},
        "train": {"output_dir": str(tmp_path / "runs")},
    }
    rc = cli.main(["train", str(write_config(tmp_path / "c.yaml", sections))])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and "model.trust_remote_code=true" in err
    assert not marker.exists() and not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------------------ pickles


def test_pickle_weights_are_never_unpickled_unless_allowed(tiny, tmp_path):
    import shutil

    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    shutil.copytree(tiny, folder)
    weights = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "PICKLE_RAN"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Plant(marker)))
    with pytest.raises(ModelLoadError, match=r"pickle files \(pytorch_model.bin\).*model.allow_pickle=true"):
        load_model(ModelConfig(name_or_path=str(folder)), device="cpu")
    assert not marker.exists()

    # Explicitly allowed (a real state dict this time): it loads.
    torch.save(weights, folder / "pytorch_model.bin")
    model = load_model(ModelConfig(name_or_path=str(folder), allow_pickle=True), device="cpu")
    name, tensor = next(iter(weights.items()))
    assert torch.equal(model.state_dict()[name], tensor)


def test_pickled_adapter_is_refused(tiny, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    marker = tmp_path / "PICKLE_RAN"
    (adapter / "adapter_model.bin").write_bytes(pickle.dumps(_Plant(marker)))
    with pytest.raises(ModelLoadError, match="model.allow_pickle"):
        load_adapter(object(), adapter)
    assert not marker.exists()


def test_allow_pickle_is_a_documented_setting():
    docs = (Path(__file__).resolve().parents[1] / "docs" / "config.md").read_text()
    assert "allow_pickle" in docs and ModelConfig().allow_pickle is False


# ------------------------------------------------------------------------------------------ paths


@pytest.mark.parametrize("name", ["../escape", "..", ".", "a/b", "/tmp/abs", "..\\win", ".hidden"])
def test_run_names_that_could_write_elsewhere_are_refused(tmp_path, name):
    out = tmp_path / "runs"
    with pytest.raises(ThinktuneError, match="train.run_name"):
        create_run_dir(out, name, "stem")
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["runs"])
    assert not (out.exists() and any(out.iterdir()))


def test_escaping_run_name_is_refused_by_the_cli_before_training(tiny, tmp_path, capsys):
    data = write_rows(tmp_path / "d.jsonl", arithmetic_rows(8))
    config = write_config(
        tmp_path / "c.yaml", tiny_sections(tiny, data, tmp_path / "runs", run_name="../../outside")
    )
    rc = cli.main(["train", str(config)])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and "train.run_name='../../outside'" in err
    assert not (tmp_path.parent / "outside").exists()


def test_eval_result_name_cannot_escape_the_output_folder(tmp_path):
    from thinktune.evals.evaluate import output_paths

    with pytest.raises(ThinktuneError, match="--name"):
        output_paths(tmp_path, "../../etc/x")
    assert output_paths(tmp_path, "tuned")[0] == tmp_path / "eval_tuned.json"


# ------------------------------------------------------------------------------------------ concurrency


def _make_run(args) -> str:
    root, barrier = args
    barrier.wait()  # every process calls create_run_dir at the same moment
    return str(create_run_dir(root, "same-name", "stem"))


def test_runs_started_together_with_the_same_name_never_share_a_folder(tmp_path):
    n = 6
    ctx = multiprocessing.get_context("fork")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(n)
        with ctx.Pool(n) as pool:
            paths = pool.map(_make_run, [(tmp_path, barrier)] * n)
    assert len(set(paths)) == n
    assert sorted(Path(p).name for p in paths) == ["same-name"] + [f"same-name-{i}" for i in range(2, n + 1)]

    # and threads in one process
    barrier = threading.Barrier(n)
    got: list[str] = []
    threads = [
        threading.Thread(target=lambda: got.append(_make_run((tmp_path / "t", barrier)))) for _ in range(n)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == n


def _append_records(path: str, n: int) -> None:
    for i in range(n):
        size = (i * 7919) % 150_000  # many lines longer than any write buffer: written in several pieces
        append_jsonl(path, {"step": i, "loss": 1.0, "pad": "x" * size, "size": size})
        time.sleep(0.002)  # a training loop logs between steps; readers get many chances to meet a write


def test_readers_never_see_a_half_written_metrics_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model: {name_or_path: x}\ndata: {source: sample}\n")
    metrics = run / "metrics.jsonl"
    metrics.touch()
    n = 300
    ctx = multiprocessing.get_context("fork")
    writer = ctx.Process(target=_append_records, args=(str(metrics), n))
    writer.start()
    partial_reads = 0  # reads that met the file while it was still growing
    try:
        while True:
            done = not writer.is_alive()
            for records in (
                list(read_jsonl(metrics)),
                RunDir.open(run).metrics_records(),
                load_run_files(run)["metrics"],  # what `thinktune report` reads
            ):
                assert [r["step"] for r in records] == list(range(len(records)))  # a prefix, in order
                assert all(len(r["pad"]) == r["size"] for r in records)
                partial_reads += 0 < len(records) < n
            if done:
                break
            time.sleep(0.001)
    finally:
        writer.join(timeout=60)
    assert writer.exitcode == 0
    assert len(list(read_jsonl(metrics))) == n and partial_reads > 3
