"""`thinktune ui` as a real server process: a training run started from the API survives SIGKILL of the server,
finishes with a whole run folder, and a new server lists it as completed; the chat worker streams base and tuned
answers. (Slow tier: a server subprocess and a tiny training run in its own subprocess.)"""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from _train_helpers import RUN_FILES, arithmetic_rows, build_tiny_chatml, write_rows
from _ui_helpers import Server, wait_for, wait_pid_gone

pytestmark = pytest.mark.slow


def tiny_values(model, data, *, steps: int, name: str) -> dict[str, str]:
    """The form's values for a tiny run of `steps` optimizer steps on the arithmetic rows (on top of demo-cpu)."""
    return {
        "model.name_or_path": str(model),
        "data.source": data.name,  # relative: taken from the first --data-dir
        "data.max_length": "256",
        "data.val_size": "4",
        "lora.r": "8",
        "lora.lora_alpha": "16",
        "train.max_steps": str(steps),
        "train.per_device_train_batch_size": "2",
        "train.gradient_accumulation_steps": "1",
        "train.learning_rate": "5e-3",
        "train.warmup_ratio": "0",
        "train.logging_steps": "1",
        "train.eval_steps": "25",
        "train.save_steps": "25",
        "train.run_name": name,
        "generation.max_new_tokens": "24",
        "eval.limit": "2",
    }


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ui-process")
    model = build_tiny_chatml(root / "tiny")
    data = write_rows(root / "arith.jsonl", arithmetic_rows(40))
    return root, model, data


def test_killing_the_server_never_stops_a_run(setup):
    """SIGKILL of the UI server mid-run: the run goes on, completes, its folder is whole; a new server lists it."""
    import psutil

    # Long enough to be mid-run when the server dies (after the 4th logged step), short enough that waiting for the
    # orphaned run to finish costs seconds, not minutes; one save and one eval on the way (every 25 steps).
    steps = 48
    root, model, data = setup
    runs = root / "runs"
    server = Server(runs, root, root / "server1.log")
    try:
        started = server.post(
            "/api/actions/train",
            {"base": {"recipe": "demo-cpu"}, "values": tiny_values(model, data, steps=steps, name="kill")},
        )
        job = started["job"]
        pid = job["pid"]
        # mid-run: the run folder exists and training has logged steps
        wait_for(
            lambda: (
                (runs / "kill" / "metrics.jsonl").is_file()
                and len((runs / "kill" / "metrics.jsonl").read_text().splitlines()) > 3
            ),
            180,
            "the first training steps",
        )
    except BaseException:
        server.stop()
        raise
    server.kill()
    assert psutil.Process(pid).is_running(), "killing the server stopped the training process"
    lines_at_kill = len((runs / "kill" / "metrics.jsonl").read_text().splitlines())
    wait_pid_gone(pid, 300)

    run = runs / "kill"
    missing = [f for f in RUN_FILES if not (run / f).exists()]
    assert not missing, f"the run folder is not whole: {missing}"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == steps
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, steps + 1))
    assert len(records) > lines_at_kill
    # its log moved into the run folder and holds the whole run, also what came after the kill
    log = run / "ui-jobs" / f"{job['id']}.log"
    assert log.is_file() and "done in" in log.read_text()

    again = Server(runs, root, root / "server2.log")
    try:
        (row,) = again.get("/api/runs")["runs"]
        assert row["name"] == "kill" and row["status"] == "completed" and row["alive"] is False
        assert row["steps"] == steps and row["has_adapter"]
        (found,) = again.get("/api/jobs")["jobs"]
        assert found["id"] == job["id"] and found["status"] == "ended" and found["run"] == "kill"
        tail = again.get("/api/tail?run=kill")
        assert sum(
            len(e["data"].get("records", [])) for e in tail["events"] if e["event"] == "metrics"
        ) == len(records)
    finally:
        again.stop()


def test_data_report_job_writes_a_report(setup):
    """inspect-data from the page: a CPU job (beside a GPU job) that writes data_report.json into RUNS/inspect-*."""
    root, model, data = setup
    runs = root / "runs-inspect"
    server = Server(runs, root, root / "server-inspect.log")
    try:
        values = tiny_values(model, data, steps=10, name="x")
        job = server.post("/api/actions/inspect-data", {"base": {"recipe": "demo-cpu"}, "values": values})[
            "job"
        ]
        assert job["gpu"] is False
        wait_for(lambda: server.get(f"/api/jobs/{job['id']}")["status"] != "running", 180, "inspect-data")
        assert server.get(f"/api/jobs/{job['id']}")["status"] == "finished"
        (report,) = runs.glob("inspect-*/data_report.json")
        assert json.loads(report.read_text())["data"]["examples"] == 40
        assert server.get("/api/runs")["runs"] == []  # a data report is not a run
    finally:
        server.stop()


def test_chat_streams_base_and_tuned(setup):
    """The chat worker loads the run once; both sides stream their pieces and finish with their replies."""
    root, model, data = setup
    runs = root / "runs"
    if not (runs / "kill" / "adapter" / "adapter_config.json").is_file():
        pytest.skip("needs the run of test_killing_the_server_never_stops_a_run")
    server = Server(runs, root, root / "server3.log")
    try:
        chat = server.post("/api/chat", {"run": "kill"})["chat"]
        wait_for(lambda: server.get(f"/api/chat/{chat}")["ready"], 180, "the chat model to load")
        req = urllib.request.Request(
            f"{server.url}/api/chat/{chat}/ask",
            data=json.dumps({"question": "What is 2 plus 3?", "sides": ["base", "tuned"]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        started = time.monotonic()
        with urllib.request.urlopen(req, timeout=180) as r:
            lines = [json.loads(line) for line in r.read().decode().splitlines() if line.strip()]
        assert time.monotonic() - started < 180
        pieces = [m for m in lines if "kind" in m]
        done = {m["side"]: m["done"] for m in lines if "done" in m}
        assert set(done) == {"base", "tuned"} and lines[-1] == {"end": True}
        for side in ("base", "tuned"):
            streamed = [m for m in pieces if m["side"] == side]
            assert streamed and all(m["kind"] in ("reasoning", "answer") for m in streamed)
            assert done[side]["new_tokens"] > 0 and done[side]["question"] == "What is 2 plus 3?"
        server.post(f"/api/chat/{chat}/close", {})
    finally:
        server.stop()
