"""`thinktune ui` through Starlette's test client (no browser, no server process): the runs table from run folders
written by thinktune's own writers, the form's validation with the CLI's errors, the command preview equal to the
command that runs, path refusals, the access token off loopback, the origin and Host checks, the event stream's
replay from a position, the jobs' records, and the two message tables."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from _runs import make_run
from conftest import SRC
from thinktune.config import validate
from thinktune.configfile import describe_fields, load_config, recipe_path
from thinktune.errors import ConfigError, JobConflict
from thinktune.ui import forms
from thinktune.ui.jobs import RUN_JOBS, STATE_DIR, Job, Jobs
from thinktune.ui.server import CSP, Settings, create_app
from thinktune.ui.tail import Position, identity, read_from
from thinktune.utils import append_jsonl, write_json

STATIC = SRC / "thinktune" / "ui" / "static"
URL = "http://127.0.0.1:7860"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """runs/alpha (trained-looking, evaluated, compared) and runs/beta (another config), plus a data folder."""
    from thinktune.evals.compare import run_compare
    from thinktune.infer.session import open_run

    root = tmp_path_factory.mktemp("ui")
    runs = root / "runs"
    runs.mkdir()
    shutil.move(make_run(root / "a"), runs / "alpha")
    shutil.move(make_run(root / "b", n_val=3, seed=1, with_eval=False), runs / "beta")
    session = open_run(runs / "alpha", device="cpu")
    try:
        run_compare(session, benchmarks=[], limit=2, out_dir=runs / "alpha")
    finally:
        session.release_model()
    data = root / "data"
    data.mkdir()
    (data / "rows.jsonl").write_text(
        '{"Question": "q", "Complex_CoT": "c", "Response": "r"}\n', encoding="utf-8"
    )
    return root


def client_for(root: Path, base_url: str = URL, **kw) -> TestClient:
    settings = Settings(root / "runs", data_dirs=[root / "data"], **kw)
    return TestClient(create_app(settings), base_url=base_url)


@pytest.fixture()
def client(root) -> TestClient:
    return client_for(root)


def sse_events(text: str) -> list[dict]:
    out = []
    for block in text.split("\n\n"):
        ev: dict = {}
        for line in block.splitlines():
            if line.startswith(":"):
                continue
            key, _, value = line.partition(": ")
            ev[key] = value
        if "event" in ev:
            ev["data"] = json.loads(ev["data"])
            out.append(ev)
    return out


# ------------------------------------------------------------------------------------------ reading run folders


def test_runs_table_from_real_run_folders(client, root):
    data = client.get("/api/runs").json()
    rows = {r["name"]: r for r in data["runs"]}
    assert set(rows) == {"alpha", "beta"}  # the base model folders (no config.yaml) are not runs
    alpha = rows["alpha"]
    summary = json.loads((root / "runs/alpha/summary.json").read_text())
    assert alpha["status"] == "completed" and alpha["alive"] is None  # not started from the page
    assert alpha["steps"] == 20 and alpha["first_loss"] == summary["first_train_loss"] == 2.5
    assert alpha["last_loss"] == 1.5 and alpha["eval_loss"] == 1.75 and alpha["wall_time_s"] == 162.4
    assert alpha["model"].endswith("a/base") and alpha["data"] == "sample"
    assert alpha["evals"] == ["tuned"] and alpha["compare"] and alpha["has_adapter"]
    assert rows["beta"]["evals"] == [] and not rows["beta"]["compare"]

    detail = client.get("/api/runs/alpha").json()
    assert detail["summary"]["status"] == "completed"
    tuned = detail["evals"]["tuned"]
    assert tuned["summary"]["heldout_loss"]["examples"] == 2 and len(tuned["records"]) == 2
    assert detail["compare"]["questions"] == 2 and len(detail["pairs"]) == 2
    pair = detail["pairs"][0]
    assert set(pair["base"]) >= {"reasoning", "answer", "think_closed"} and pair["question"]


def test_an_export_being_written_is_not_listed(client, root):
    """An export is written into a hidden ".merged.partial-*" folder and renamed when verified; the page waits for
    "merged" in the list, so the half-written folder must not be in it."""
    exports = root / "runs/beta/export"
    (exports / ".merged.partial-x1y2").mkdir(parents=True)
    try:
        assert client.get("/api/runs/beta").json()["exports"] == []
        (exports / ".merged.partial-x1y2").rename(exports / "merged")
        assert client.get("/api/runs/beta").json()["exports"] == ["merged"]
    finally:
        shutil.rmtree(exports)


def test_overlay_and_config_differences(client):
    data = client.get("/api/overlay?runs=alpha,beta").json()
    assert [p[0] for p in data["curves"]["alpha"]["train"]] == [5, 10, 15, 20]
    assert [p[1] for p in data["curves"]["alpha"]["eval"]] == [1.9, 1.75]
    keys = {r["key"]: r["values"] for r in data["diff"]["rows"]}
    assert keys["data.val_size"] == [4, 3]
    assert "model.name_or_path" in keys and "train.output_dir" not in keys
    assert "lora.r" not in keys  # the same in both
    assert client.get("/api/overlay?runs=" + ",".join(["alpha"] * 6)).status_code == 400
    assert client.get("/api/overlay?runs=alpha").status_code == 400  # 2 to 5 runs


# ------------------------------------------------------------------------------------------ the form


def test_form_is_the_config_schema(client):
    fields = client.get("/api/schema").json()["fields"]
    assert [f["name"] for f in fields] == [name for name, *_ in describe_fields()]
    by_name = {f["name"]: f for f in fields}
    assert by_name["data.length_policy"]["choices"] == ["drop", "truncate_reasoning"]
    assert by_name["model.trust_remote_code"]["choices"] == ["true", "false"]
    assert by_name["data.max_length"]["help"].startswith("Longest tokenized example")
    # every default, as the form shows it, reads back to the default
    cfg = load_config(
        None,
        [
            f"{f['name']}={f['default'] or ('null' if f['optional'] else '')}"
            for f in fields
            if not f["fixed"]
        ],
    )
    defaults = {name: default for name, _, default, _ in describe_fields()}
    for name, value in defaults.items():
        section, key = name.split(".")
        assert getattr(getattr(cfg, section), key) == value, name


def test_validation_errors_are_the_clis(client):
    values = {"train.learning_rate": "-1", "lora.r": "0"}
    r = client.post("/api/form/validate", json={"base": {"recipe": "demo-cpu"}, "values": values})
    assert r.status_code == 400
    with pytest.raises(ConfigError) as cli_error:
        validate(load_config(recipe_path("demo-cpu"), ["train.learning_rate=-1", "lora.r=0"]))
    assert r.json()["error"] == str(cli_error.value)
    assert r.json()["fields"] == ["lora.r", "train.learning_rate"]
    r = client.post(
        "/api/form/validate", json={"base": {"recipe": "demo-cpu"}, "values": {"train.max_steps": "ten"}}
    )
    assert r.status_code == 400 and "train.max_steps: expected an integer, got 'ten'" in r.json()["error"]
    r = client.post(
        "/api/form/validate", json={"base": {"recipe": "demo-cpu"}, "values": {"train.lerning_rate": "1"}}
    )
    assert r.status_code == 400 and "unknown key 'train.lerning_rate'" in r.json()["error"]
    r = client.post("/api/form/validate", json={"base": {"recipe": "no-such-recipe"}, "values": {}})
    assert r.status_code == 400 and "Recipes:" in r.json()["error"]


def test_command_preview_is_the_command_that_runs(client, root, monkeypatch):
    """Start runs exactly the argument list the page showed (no shell), and refuses a second GPU job."""
    started: list[list[str]] = []
    real_popen = subprocess.Popen

    def recording_popen(argv, **kw):
        assert isinstance(argv, list) and "shell" not in kw
        started.append(list(argv))
        return real_popen([sys.executable, "-c", "import time; time.sleep(0.5)"], **kw)

    monkeypatch.setattr("thinktune.ui.jobs.subprocess.Popen", recording_popen)
    body = {
        "base": {"run": "alpha"},
        "values": {"train.max_steps": "3", "data.source": "rows.jsonl", "train.run_name": "alpha"},
    }
    preview = client.post("/api/actions/train", json={**body, "dry_run": True}).json()
    assert client.post("/api/form/validate", json=body).json()["argv"] == preview["argv"]
    runs = root / "runs"
    assert preview["argv"][:4] == [sys.executable, "-m", "thinktune", "train"]
    assert preview["argv"][4] == str(runs / "alpha" / "config.yaml")
    # the typed relative path is taken from the data folder and made absolute; the run name is never reused
    assert f"data.source={root / 'data' / 'rows.jsonl'}" in preview["argv"]
    assert preview["argv"][-2:] == [f"train.output_dir={runs}", "train.run_name=alpha-2"]
    job = client.post("/api/actions/train", json=body).json()["job"]
    assert (
        started == [preview["argv"]] and job["argv"] == preview["argv"] and job["expected_run"] == "alpha-2"
    )

    # a second GPU job is refused, naming the running one; "run anyway" starts it
    ev = {"run": "alpha", "params": {"limit": 2, "benchmark": "rows.jsonl"}}
    r = client.post("/api/actions/eval", json=ev)
    assert r.status_code == 409 and "train alpha-2 is running" in r.json()["error"]
    dry = client.post("/api/actions/eval", json={**ev, "dry_run": True}).json()
    assert dry["argv"][3:] == [
        "eval",
        str(runs / "alpha"),
        "--name",
        "tuned-2",
        "--benchmark",
        str(root / "data/rows.jsonl"),
        "--limit",
        "2",
    ]  # eval_tuned.json exists: the next free name, never --overwrite
    forced = client.post("/api/actions/eval", json={**ev, "force": True}).json()["job"]
    assert forced["argv"] == dry["argv"] == started[-1]
    for kind, params in (
        ("compare", {}),
        ("export", {"format": "gguf", "gguf_type": "q8_0"}),
        ("report", {}),
    ):
        argv = client.post(
            f"/api/actions/{kind}", json={"run": "beta", "params": params, "dry_run": True}
        ).json()["argv"]
        assert argv[3:5] == [kind, str(runs / "beta")]
    assert (
        client.post("/api/actions/compare", json={"run": "alpha", "dry_run": True}).status_code == 400
    )  # exists
    inspect = client.post("/api/actions/inspect-data", json={**body, "dry_run": True}).json()["argv"]
    assert inspect[3:5] == ["inspect-data", str(runs / "alpha" / "config.yaml")]
    assert f"train.output_dir={runs}" in inspect
    app_jobs: Jobs = client.app.state.jobs
    app_jobs.wait_all(30)
    assert (runs / "alpha" / RUN_JOBS / f"{forced['id']}.log").is_file()
    for j in app_jobs.all():  # leave the fixture's folders as they were for the other tests
        j.path.unlink()
        j.log.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------ safety


def test_paths_outside_the_allowed_folders_are_refused(client, root, tmp_path):
    outside = tmp_path / "secret.jsonl"
    outside.write_text("{}\n")
    link = root / "data" / "link.jsonl"
    link.symlink_to(outside)
    try:
        for value in (str(outside), "../runs/alpha/config.yaml", "link.jsonl", "/etc/passwd"):
            r = client.post(
                "/api/form/validate", json={"base": {"recipe": "demo-cpu"}, "values": {"data.source": value}}
            )
            assert r.status_code == 403, (value, r.json())
            assert "data.source" in r.json()["error"]
        r = client.post(
            "/api/form/validate",
            json={"base": {"recipe": "demo-cpu"}, "values": {"data.source": "link.jsonl"}},
        )
        assert "symlink" in r.json()["error"]
        for name in ("..", "../a/base", "%2Fetc", "alpha%2F..%2F..%2Fb"):
            assert client.get(f"/api/runs/{name}").status_code in (403, 404), name
        r = client.post(
            "/api/actions/eval", json={"run": "alpha", "params": {"benchmark": str(outside)}, "dry_run": True}
        )
        assert r.status_code == 403
        r = client.post("/api/form/base", json={"base": {"run": "../a"}})
        assert r.status_code == 403
        # hub ids and the bundled sample are not paths
        ok = client.post(
            "/api/form/validate",
            json={"base": {"recipe": "demo-cpu"}, "values": {"data.source": "sample:en"}},
        )
        assert ok.status_code == 200
    finally:
        link.unlink()


def test_token_is_required_off_loopback(root):
    c = client_for(root, host="0.0.0.0", base_url="http://192.0.2.7:7860")
    token = c.app.state.settings.token
    assert token and len(token) >= 24  # a random one when --token is not given
    for path in ("/", "/api/runs", "/static/app.js", "/api/stream?run=alpha"):
        r = c.get(path)
        assert r.status_code == 401, path
        assert r.headers["content-security-policy"] == CSP
    assert c.get("/api/runs", headers={"Authorization": "Bearer wrong-token"}).status_code == 403
    assert c.get("/api/runs", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    r = c.get(f"/?token={token}", follow_redirects=False)  # the printed URL: the token becomes a cookie
    assert (
        r.status_code == 303
        and r.headers["location"] == "/"
        and "httponly" in r.headers["set-cookie"].lower()
    )
    assert c.get("/api/runs").status_code == 200  # the cookie now
    c.cookies.clear()
    assert c.post("/api/form/base", json={"base": {"recipe": "demo-cpu"}}).status_code == 401
    given = client_for(root, host="0.0.0.0", token="my-own-token", base_url="http://192.0.2.7:7860")
    assert given.get("/api/runs", headers={"Authorization": "Bearer my-own-token"}).status_code == 200


def test_loopback_needs_no_token_but_refuses_other_sites(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-security-policy"] == CSP
    assert "https://" not in r.text and "http://" not in r.text  # nothing from another host
    for name in ("app.js", "app.css"):
        text = client.get(f"/static/{name}").text
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text), name
    # DNS rebinding: a name other than loopback in the Host header
    assert client.get("/api/runs", headers={"host": "evil.example:7860"}).status_code == 421
    # a form post from another site (not JSON) or a cross-origin JSON request
    r = client.post(
        "/api/form/validate", content="base=x", headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert r.status_code == 415
    r = client.post(
        "/api/form/base", json={"base": {"recipe": "demo-cpu"}}, headers={"origin": "http://evil.example"}
    )
    assert r.status_code == 403
    assert (
        client.post(
            "/api/form/base", json={"base": {"recipe": "demo-cpu"}}, headers={"origin": URL}
        ).status_code
        == 200
    )
    assert client.get("/static/../server.py").status_code == 404


# ------------------------------------------------------------------------------------------ the live feed


def test_event_stream_replays_from_a_position(root, client):
    runs = root / "runs"
    metrics = runs / "beta" / "metrics.jsonl"
    before = metrics.read_bytes()
    lines = before.decode().splitlines()
    try:
        events = sse_events(client.get("/api/stream?run=beta").text)
        got = [r for e in events if e["event"] == "metrics" for r in e["data"]["records"]]
        assert got == [json.loads(line) for line in lines]
        assert events[-1]["event"] == "end" and events[-1]["data"]["summary"]["status"] == "completed"

        # from the middle of the file: exactly the lines after it
        middle = len("\n".join(lines[:3])) + 1
        pos = f"{Position(identity(metrics), middle).encode()}||"
        events = sse_events(client.get("/api/stream?run=beta", headers={"Last-Event-ID": pos}).text)
        assert [r for e in events if e["event"] == "metrics" for r in e["data"]["records"]] == [
            json.loads(line) for line in lines[3:]
        ]
        last = [e for e in events if e["event"] == "metrics"][-1]["id"]

        # two lines later (and half a third still being written): only the two, once each
        append_jsonl(metrics, {"step": 25, "loss": 1.4})
        append_jsonl(metrics, {"step": 30, "loss": 1.3})
        with open(metrics, "a") as f:
            f.write('{"step": 35, "lo')
        events = sse_events(client.get("/api/stream?run=beta", headers={"Last-Event-ID": last}).text)
        new = [r for e in events if e["event"] == "metrics" for r in e["data"]["records"]]
        assert new == [{"step": 25, "loss": 1.4}, {"step": 30, "loss": 1.3}]
        # the polling fallback: the same from the same position
        polled = client.get("/api/tail", params={"run": "beta", "pos": last}).json()
        assert [r for e in polled["events"] for r in e["data"]["records"]] == new
        again = client.get("/api/tail", params={"run": "beta", "pos": polled["pos"]}).json()
        assert again["events"] == [] and again["ended"]  # nothing left and nothing running

        # a rewritten file (resume drops the steps it redoes): the reader is told to start again
        metrics.write_bytes(before)
        os.replace(metrics, metrics.with_suffix(".tmp"))
        shutil.copy(metrics.with_suffix(".tmp"), metrics)
        metrics.with_suffix(".tmp").unlink()
        polled = client.get("/api/tail", params={"run": "beta", "pos": polled["pos"]}).json()
        assert polled["events"][0]["data"]["reset"] is True
        assert len(polled["events"][0]["data"]["records"]) == len(lines)
    finally:
        metrics.write_bytes(before)


def test_tail_reads_whole_lines_and_progress_bars(tmp_path):
    log = tmp_path / "x.log"
    log.write_bytes(b"first\nbar 1%\rbar 2%\rpartial")
    chunk = read_from(log, Position())
    assert chunk.lines == ["first", "bar 1%\r", "bar 2%\r"] and not chunk.reset
    with open(log, "ab") as f:
        f.write(b" line\n")
    assert read_from(log, chunk.position).lines == ["partial line"]


# ------------------------------------------------------------------------------------------ jobs


def _sleeper(seconds: float) -> list[str]:
    return [sys.executable, "-c", f"import time; print('working', flush=True); time.sleep({seconds})"]


def test_jobs_are_found_again_by_a_new_server_and_pids_are_checked(root, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(root / "runs" / "beta", runs / "beta")
    first = Jobs(runs)
    job = first.start("eval", _sleeper(30), cwd=tmp_path, run="beta", label="eval beta")
    assert job.path == runs / "beta" / RUN_JOBS / f"{job.id}.json"
    try:
        with pytest.raises(JobConflict, match=r"eval beta is running \(job .*pid \d+"):
            first.start("export", _sleeper(0), cwd=tmp_path, run="beta")
        second = Jobs(runs)  # a restarted server: everything from the files
        (found,) = second.all()
        assert found.id == job.id and second.alive(found) and second.status(found) == "running"
        assert found.argv == job.argv and found.create_time == job.create_time
        # the same pid with another start time is another process: not ours
        impostor = Job(**{**found.to_dict(), "create_time": found.create_time - 1000}, path=found.path)
        assert not second.alive(impostor)
        second.stop(found.id)  # SIGTERM to its process group
        first.wait_all(20)
        time.sleep(0.2)
        (ended,) = Jobs(runs).all()
        assert ended.rc == -signal.SIGTERM and Jobs(runs).status(ended) == "stopped"
        assert "working" in ended.log.read_text()
    finally:
        if first.alive(job):
            os.killpg(job.pid, signal.SIGKILL)
        first.wait_all(20)


def test_a_new_runs_log_moves_into_its_folder(tmp_path):
    """A new training run's record and log start outside any run folder and move into it once the log names it;
    the process keeps writing to the same file."""
    runs = tmp_path / "runs"
    script = (
        "import pathlib, sys, time\n"
        f"p = pathlib.Path({str(runs / 'fresh')!r}); p.mkdir(parents=True); (p / 'config.yaml').write_text('{{}}')\n"
        "print('12:00:00 INFO thinktune.train.recipe: run folder: ' + str(p), flush=True)\n"
        "time.sleep(1.5); print('after the move', flush=True)\n"
    )
    jobs = Jobs(runs)
    job = jobs.start(
        "train", [sys.executable, "-c", script], cwd=tmp_path, expected_run="fresh", label="train fresh"
    )
    assert job.path.parent == runs / STATE_DIR / "jobs"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (runs / "fresh" / RUN_JOBS).is_dir():
        jobs.all()
        time.sleep(0.1)
    jobs.wait_all(20)
    (moved,) = jobs.all()
    assert moved.run == "fresh" and moved.path == runs / "fresh" / RUN_JOBS / f"{job.id}.json"
    assert moved.rc == 0 and not list((runs / STATE_DIR / "jobs").iterdir())
    text = moved.log.read_text()
    assert "run folder:" in text and "after the move" in text


def test_stale_records_are_not_alive(tmp_path):
    runs = tmp_path / "runs"
    folder = runs / STATE_DIR / "jobs"
    folder.mkdir(parents=True)
    write_json(
        folder / "old.json",
        {
            "id": "old",
            "kind": "train",
            "argv": ["x"],
            "cwd": "/",
            "gpu": True,
            "pid": os.getpid(),
            "create_time": 1.0,
            "started_at": "2020",
        },
    )
    (job,) = Jobs(runs).all()
    assert not Jobs(runs).alive(job) and Jobs(runs).status(job) == "ended"
    assert Jobs(runs).running() == []


# ------------------------------------------------------------------------------------------ the page's texts


def test_message_tables_have_the_same_keys_and_cover_the_page():
    en = json.loads((STATIC / "messages.en.json").read_text(encoding="utf-8"))
    zh = json.loads((STATIC / "messages.zh.json").read_text(encoding="utf-8"))
    assert set(en) == set(zh)
    assert all(isinstance(v, str) and v.strip() for v in [*en.values(), *zh.values()])
    for key in en:  # the same placeholders in both languages
        assert sorted(re.findall(r"\{(\w+)\}", en[key])) == sorted(re.findall(r"\{(\w+)\}", zh[key])), key
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    js = (STATIC / "app.js").read_text(encoding="utf-8")
    used = set(re.findall(r'data-i18n(?:-title|-placeholder)?="([^"]+)"', html))
    used |= set(re.findall(r'\bt\("([a-z_]+\.[a-z_.0-9]+)"', js))
    assert used - set(en) == set(), "keys used by the page but missing from the tables"
    assert 'style="' not in html  # the CSP allows no inline style
    assert "<script>" not in html  # nor inline script


def test_form_overrides_keep_only_changes():
    path = recipe_path("demo-cpu")
    base = forms.base_values(path)
    assert forms.overrides_for(path, dict(base), [Path.cwd()]) == []
    assert forms.overrides_for(
        path, {**base, "data.max_length": "1536", "model.tokenizer": ""}, [Path.cwd()]
    ) == ["data.max_length=1536"]
    with pytest.raises(ConfigError, match="one line"):
        forms.overrides_for(path, {"train.optim": "a\nb"}, [Path.cwd()])


def test_resume_runs_the_command_of_the_runs_own_stage(tmp_path):
    # a GRPO or DPO run resumes with its own command: `thinktune train --resume` would refuse its folder
    for stage, command in (("sft", "train"), ("grpo", "grpo"), ("dpo", "dpo"), (None, "train")):
        run = tmp_path / f"run-{stage}"
        run.mkdir()
        summary = {"status": "interrupted"} | ({"stage": stage} if stage else {})
        (run / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
        (run / "config.yaml").write_text("model:\n  name_or_path: tiny\n", encoding="utf-8")
        argv = forms.resume_command(tmp_path, run.name)
        assert argv[-3:] == [command, "--resume", str(run.resolve())], stage
