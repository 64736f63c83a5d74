"""Run folders are safe to share a disk with: run and result names cannot write outside the output folder, runs
started together with the same name never share a folder, and readers never see a half-written metrics.jsonl
line."""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path

import pytest

from _train_helpers import arithmetic_rows, build_tiny_chatml, tiny_sections, write_config, write_rows
from thinktune import cli
from thinktune.errors import ThinktuneError
from thinktune.report.files import load_run_files
from thinktune.rundir import RunDir
from thinktune.utils import append_jsonl, create_run_dir, read_jsonl


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_chatml(tmp_path_factory.mktemp("rundir") / "tiny")


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
