"""tfsubmit through Prefect deployments: a real `prefect server start`, a process work pool,
`prefect deploy` from deployments/prefect.yaml, a real worker, real training runs, the UI in
headless Chromium.

Everything runs against its own server on 127.0.0.1 (its own PREFECT_HOME), started and
stopped by PID here; the worker's runs use their own workspace.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import EXAMPLE, ROOT, TFSUBMIT

from tfsubmit import Experiment, TensorFlow
from tfsubmit.errors import TfsubmitError
from tfsubmit.serving.endpoints import Endpoints
from tfsubmit.store.layout import Workspace
from tfsubmit.store.record import TERMINAL_STATUSES
from tfsubmit.store.registry import ModelRegistry
from tfsubmit.system.processes import processes_of_run

PREFECT = str(Path(TFSUBMIT[0]).with_name("prefect"))
TERMINAL_STATES = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
TASKS = {"snapshot_source", "resolve_environment", "provision_nodes", "launch_topology",
         "collect_outputs"}


def readme_commands() -> list[list[str]]:
    """The `prefect` commands of the docs' deployment steps (docs/prefect.md, once
    README's), in order, as argv lists."""
    section = (ROOT / "docs" / "prefect.md").read_text()
    return [[PREFECT, *shlex.split(line, comments=True)[1:]] for line in section.splitlines()
            if line.startswith(".venv/bin/prefect ")]


def readme_command(*words: str) -> list[str]:
    """The README's command whose words after `prefect` start with `words`."""
    found = [argv for argv in readme_commands() if argv[1: 1 + len(words)] == list(words)
             or argv[2: 2 + len(words)] == list(words)]
    assert found, f"docs/prefect.md has no `prefect {' '.join(words)}` step"
    return found[0]


class Deployed:
    """The server, pool, deployments and worker of this module."""

    def __init__(self, root: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.workspace = Workspace(root / "worker-workspace")
        self.env = {
            **os.environ,
            "PREFECT_HOME": str(root / "prefect-home"),
            "PREFECT_API_URL": self.api,
            "PREFECT_SERVER_API_PORT": str(self.port),  # the UI calls this port, not :4200
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_CLI_PROMPT": "false",
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "TFSUBMIT_WORKSPACE": str(self.workspace.root),
        }
        self.logs = root
        # README's `prefect server start`, on a free port instead of 4200.
        self.server = self._start("server", [*readme_command("server", "start"), "--host",
                                             "127.0.0.1", "--port", str(self.port)])
        deadline = time.monotonic() + 120
        while not self._healthy():
            assert self.server.poll() is None, (root / "server.log").read_text()
            assert time.monotonic() < deadline, "the Prefect server did not start"
            time.sleep(0.3)
        self.worker = None

    def _start(self, name: str, argv: list[str]) -> subprocess.Popen:
        with (self.logs / f"{name}.log").open("wb") as log:
            # Popen, not `&` in a shell: a backgrounded worker ignores SIGTERM.
            return subprocess.Popen(argv, env=self.env, cwd=ROOT, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.api}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def start_worker(self) -> None:
        self.worker = self._start("worker", readme_command("worker", "start"))

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        result = subprocess.run(list(args), env=self.env, cwd=ROOT, capture_output=True,
                                text=True, timeout=timeout)
        assert result.returncode == 0, result.stdout + result.stderr
        return result

    def call(self, method: str, path: str, body=None):
        response = httpx.request(method, f"{self.api}{path}", json=body, timeout=30)
        response.raise_for_status()
        return response.json() if response.content else None

    def run_deployment(self, name: str, *params: str) -> str:
        argv = [PREFECT, "deployment", "run", name]
        for param in params:
            argv += ["--param", param]
        out = self.cli(*argv).stdout
        return re.search(r"UUID: ([0-9a-f-]{36})", out)[1]

    def wait(self, flow_run_id: str, timeout: float = 600) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            flow_run = self.call("GET", f"/flow_runs/{flow_run_id}")
            if flow_run["state"]["type"] in TERMINAL_STATES:
                return flow_run
            assert time.monotonic() < deadline, f"flow run still {flow_run['state']['type']}"
            time.sleep(0.5)

    def logs_of(self, flow_run_id: str) -> str:
        """The flow run's logs, once its process has sent its last ones (the engine's
        flow-level "Finished in state" line comes last)."""
        deadline = time.monotonic() + 30
        while True:
            logs = self.call("POST", "/logs/filter", {
                "logs": {"flow_run_id": {"any_": [flow_run_id]}}, "sort": "TIMESTAMP_ASC",
                "limit": 200})
            if any(log["message"].startswith("Finished in state") and not log["task_run_id"]
                   for log in logs) or time.monotonic() > deadline:
                return "\n".join(log["message"] for log in logs)
            time.sleep(0.5)

    def artifacts_of(self, flow_run_id: str) -> dict[str, dict]:
        found = self.call("POST", "/artifacts/filter", {
            "artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})
        return {a["key"].rsplit("-", 1)[1]: a for a in found}

    def live_runs(self, deployment_id: str | None = None) -> list[dict]:
        body = {"flow_runs": {"state": {"type": {"any_": [
            "RUNNING", "PENDING", "SCHEDULED", "CANCELLING"]}}}}
        if deployment_id:
            body["deployments"] = {"id": {"any_": [deployment_id]}}
        return self.call("POST", "/flow_runs/filter", body)

    def stop(self) -> None:
        # Nothing may keep running: cancel what is left (the worker stops running ones), then
        # stop the worker and the server.
        for flow_run in self.live_runs():
            cancel = "CANCELLING" if flow_run["state"]["type"] == "RUNNING" else "CANCELLED"
            self.call("POST", f"/flow_runs/{flow_run['id']}/set_state",
                      {"state": {"type": cancel}, "force": True})
        deadline = time.monotonic() + 60
        while self.live_runs() and time.monotonic() < deadline:
            time.sleep(0.5)
        for process in (self.worker, self.server):
            if process is None:
                continue
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """Server, pool, deployments, worker: README's steps, as written there."""
    prefect = Deployed(tmp_path_factory.mktemp("deployments"))
    try:
        prefect.cli(*readme_command("work-pool", "create"))
        prefect.cli(*readme_command("deploy"))
        prefect.start_worker()
        yield prefect
    finally:
        prefect.stop()


@pytest.fixture(scope="module")
def example_run(deployed):
    """README's `prefect deployment run 'submit-training/default' --param job=...`, run to
    its end."""
    out = deployed.cli(*readme_command("deployment", "run", "submit-training/default")).stdout
    return deployed.wait(re.search(r"UUID: ([0-9a-f-]{36})", out)[1])


def test_readme_turns_the_nightly_schedule_on(deployed):
    """README's `schedule ls` shows the ID its `schedule resume` needs; then it is active."""
    deployment = deployed.call("GET", "/deployments/name/retrain/default")
    assert [s["active"] for s in deployment["schedules"]] == [False]
    listed = deployed.cli(*readme_command("deployment", "schedule", "ls")).stdout
    schedule_id = deployment["schedules"][0]["id"]
    assert schedule_id in listed
    resume = readme_command("deployment", "schedule", "resume")
    assert resume[-1] == "SCHEDULE_ID"
    try:
        deployed.cli(*resume[:-1], schedule_id)
        deployment = deployed.call("GET", "/deployments/name/retrain/default")
        assert [s["active"] for s in deployment["schedules"]] == [True]
    finally:  # no 03:00 run during the tests
        deployed.cli(PREFECT, "deployment", "schedule", "pause", "retrain/default", schedule_id)


def test_deployments_from_the_yaml(deployed):
    names = {(d["name"], d["entrypoint"]) for d in deployed.call("POST", "/deployments/filter", {})}
    assert ("default", "tfsubmit/flows/submit.py:submit_training") in names
    assert ("default", "tfsubmit/flows/retrain.py:retrain") in names
    retrain = deployed.call("GET", "/deployments/name/retrain/default")
    assert retrain["work_pool_name"] == "tfsubmit-process"
    schedules = retrain["schedules"]  # the nightly cron is there, and off
    assert [s["schedule"]["cron"] for s in schedules] == ["0 3 * * *"]
    assert not schedules[0]["active"]


def test_deployment_run_trains_the_example(deployed, example_run):
    assert example_run["state"]["type"] == "COMPLETED", example_run["state"]
    flow_run_id = example_run["id"]
    run_id = example_run["name"]  # the flow run is named after the tfsubmit run
    assert run_id.startswith("demo_") and "demo" in example_run["tags"]
    record = json.loads((deployed.workspace.runs / run_id / "run.json").read_text())
    assert record["status"] == "Completed" and record["flow_run_id"] == flow_run_id

    tasks = deployed.call("POST", "/task_runs/filter",
                          {"flow_runs": {"id": {"any_": [flow_run_id]}}})
    assert {t["task_key"].rsplit("-", 1)[0] for t in tasks} >= TASKS
    assert all(t["state"]["type"] == "COMPLETED" for t in tasks)

    logs = deployed.logs_of(flow_run_id)
    assert "[worker:0@local] Epoch 3/3" in logs
    assert f"[tfsubmit] run {run_id} Completed" in logs

    artifacts = deployed.artifacts_of(flow_run_id)
    assert set(artifacts) == {"metrics", "progress", "summary", "outputs", "curves"}
    rows = {row["metric"]: row for row in json.loads(artifacts["metrics"]["data"])}
    assert len(rows["loss"]["values"]) == 3 and rows["loss"]["last"] == rows["loss"]["values"][-1]
    assert rows["val_loss"]["min"] <= rows["val_loss"]["values"][0]
    assert artifacts["progress"]["data"] == 100.0
    assert artifacts["progress"]["description"].startswith("epoch 3 of 3: ")
    summary = artifacts["summary"]["data"]
    for expected in ("**Topology**: single process", "**Hosts**: local",
                     f"`{record['snapshot_hash']}`", f"`{record['environment_hash']}`",
                     "| worker:0@local | 0 | 0 |", "| launch_topology |"):
        assert expected in summary, summary
    assert str(deployed.workspace.runs / run_id / "outputs") in artifacts["outputs"]["data"]


def test_runs_of_an_experiment_come_from_the_api(deployed, example_run):
    listing = subprocess.run([*TFSUBMIT, "runs", "--experiment", "demo"], env=deployed.env,
                             capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    row = next(line for line in listing.stdout.splitlines()
               if line.startswith(example_run["name"]))
    assert "Completed" in row and example_run["id"] in row
    other = subprocess.run([*TFSUBMIT, "runs", "--experiment", "no-such-experiment"],
                           env=deployed.env, capture_output=True, text=True, timeout=60)
    assert "no runs yet in experiment no-such-experiment" in other.stdout


def test_the_ui_shows_the_run_and_its_artifacts(deployed, example_run):
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium package is missing (scripts/setup.sh installs it)"
    url = f"http://127.0.0.1:{deployed.port}/v2/runs/flow-run/{example_run['id']}?tab=Artifacts"
    with tempfile.TemporaryDirectory() as profile:
        page = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=20000",
             "--dump-dom", url],
            capture_output=True, text=True, timeout=120,
        ).stdout
    assert example_run["name"] in page
    key = example_run["name"].lower().replace("_", "-")
    for suffix in ("metrics", "summary", "progress", "outputs"):
        assert f"{key}-{suffix}" in page, f"artifact {suffix} not on the page"


def test_submit_to_a_deployment_returns_at_once_then_streams(deployed, monkeypatch, capsys):
    monkeypatch.setenv("PREFECT_API_URL", deployed.api)
    job = TensorFlow(source_directory=str(EXAMPLE), entry_script="train.py",
                     script_params={"--epochs": 2, "--samples": 500})
    began = time.monotonic()
    run = Experiment("dep-api").submit(job, deployment="submit-training/default")
    assert time.monotonic() - began < 5
    assert run.get_status() not in TERMINAL_STATUSES  # it has not even started training
    details = run.wait_for_completion(show_output=True)
    printed = capsys.readouterr().out
    assert details["status"] == "Completed"
    assert "[worker:0@local] Epoch 2/2" in printed
    assert f"[tfsubmit] run {run.id} Completed" in printed
    assert printed.index("Epoch 1/2") < printed.index("Epoch 2/2")
    metrics = run.get_metrics()
    assert len(metrics["val_loss"]) == 2 and metrics["epoch"] == [1.0, 2.0]
    assert run.script_params == {"--epochs": 2, "--samples": 500}
    # The one run API: its files (the worker ran it on this machine), Azure ML's details.
    assert {"output.log", "outputs/model.keras"} <= set(run.get_file_names())
    assert run.get_details()["runId"] == run.id and run.get_details()["endTimeUtc"]
    assert run.get_portal_url().endswith(f"/runs/flow-run/{run.flow_run_id}")
    flow_run = deployed.call("GET", f"/flow_runs/{run.flow_run_id}")
    assert flow_run["name"] == run.id and "dep-api" in flow_run["tags"]

    # The CLI: the same through `tfsubmit submit --deployment`, and `show` finds the run in
    # the API though this workspace has no folder for it.
    result = subprocess.run(
        [*TFSUBMIT, "submit", str(EXAMPLE / "job.yaml"), "--experiment", "dep-cli",
         "--deployment", "submit-training/default"],
        env={**deployed.env, "TFSUBMIT_WORKSPACE": str(deployed.logs / "client-workspace")},
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[worker:0@local] Epoch 3/3" in result.stdout and "  val_loss: [" in result.stdout
    run_id = result.stdout.split("Submitted run ", 1)[1].split()[0]
    shown = subprocess.run([*TFSUBMIT, "show", run_id, "--json"], capture_output=True, text=True,
                           env={**deployed.env, "TFSUBMIT_WORKSPACE": str(deployed.logs / "c2")})
    details = json.loads(shown.stdout)
    assert details["status"] == "Completed" and set(details["metrics"]) >= {"loss", "val_loss"}


def test_cancel_a_deployment_run_leaves_nothing(deployed, monkeypatch, job_dir):
    """Cancel goes through Prefect (Cancelling); the worker stops the flow run's process, and
    the flow stops the job first, children that left its process group included."""
    monkeypatch.setenv("PREFECT_API_URL", deployed.api)
    run = Experiment("dep-cancel").submit(
        TensorFlow(source_directory=str(job_dir), entry_script="sleeper.py"),
        deployment="submit-training/default")
    # any() stops following the logs at the first match: the job is running.
    assert any("ready: sleeping" in line for line in run.stream_logs())
    assert processes_of_run(run.id)
    run.cancel()
    details = run.get_details()
    assert details["status"] == "Canceled", details
    deadline = time.monotonic() + 15
    while processes_of_run(run.id) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_of_run(run.id) == []
    record = json.loads((deployed.workspace.runs / run.id / "run.json").read_text())
    assert record["status"] == "Canceled" and "stopped by its worker" in record["error"]
    assert (deployed.workspace.runs / run.id / "output.log").read_text().count("ready: sleeping")


def test_unknown_deployment_is_named(deployed, monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", deployed.api)
    job = TensorFlow(source_directory=str(EXAMPLE), entry_script="train.py")
    with pytest.raises(TfsubmitError, match="no deployment 'submit-training/nope'.*prefect deploy"):
        Experiment("x").submit(job, deployment="submit-training/nope")


def test_retrain_promotes_a_better_model_and_refuses_a_worse_one(deployed):
    def retrain(learning_rate: float, epochs: int, *more: str) -> dict:
        params = json.dumps({"--learning-rate": learning_rate, "--epochs": epochs,
                             "--samples": 600})
        flow_run = deployed.wait(deployed.run_deployment(
            "retrain/default", "job=examples/keras-synthetic/job.yaml", "experiment=rt",
            f"script_params={params}", *more))
        assert flow_run["state"]["type"] == "COMPLETED", deployed.logs_of(flow_run["id"])
        return flow_run

    registry = ModelRegistry(deployed.workspace)
    first = retrain(0.001, 1)  # nothing earlier: promoted as version 1
    assert [v["version"] for v in registry.versions("rt")] == [1]
    # Version 1 served (a deploy-model flow run on this server, TF Serving's API); the next
    # retrain that promotes updates the endpoint (issue 26).
    deployed.cli(sys.executable, "-c", "from tfsubmit.serving.endpoints import Endpoints; "
                 "from tfsubmit.flows.serve import deploy_model; "
                 "from tfsubmit.store.layout import Workspace; "
                 "deploy_model(endpoint='rt-live', "
                 "version=Endpoints(Workspace()).plan('rt-live', 'rt:1'))", timeout=900)
    endpoints = Endpoints(deployed.workspace)
    try:
        assert endpoints.state("rt-live")["model"] == "rt:1"
        retrain(0.05, 3, "endpoint=rt-live")  # clearly better: version 2, and served
        served = httpx.get(endpoints.state("rt-live")["base_uri"] + "/v1/models/rt").json()
        assert served["model_version_status"][0]["version"] == "2"
        assert endpoints.state("rt-live")["state"] == "Healthy"
    finally:
        endpoints.delete("rt-live")
    versions = registry.versions("rt")
    assert [v["version"] for v in versions] == [1, 2]
    assert versions[1]["value"] < versions[0]["value"]
    assert (registry.path("rt", 2) / "model.keras").is_file()
    worse = retrain(0.00001, 1)  # clearly worse: refused
    assert [v["version"] for v in registry.versions("rt")] == [1, 2]
    decision = deployed.artifacts_of(worse["id"])["decision"]["data"]
    assert "**Not promoted**" in decision
    runs = deployed.workspace.list_runs("rt")
    assert len(runs) == 3 and all(r["status"] == "Completed" for r in runs)
    assert versions[0]["run_id"] == runs[-1]["id"]  # the oldest run was version 1
    logs = deployed.logs_of(first["id"])
    assert "promoted run" in logs and "as rt version 1" in logs


def test_an_interval_schedule_produces_runs(deployed, tmp_path):
    """The retrain deployment with a short interval schedule: the server schedules runs on
    its own and the worker executes them."""
    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    retrain = next(d for d in spec["deployments"] if "retrain" in d["entrypoint"])
    retrain.update(name="every-20s", schedules=[{"interval": 20, "active": True}],
                   parameters={"job": "examples/keras-synthetic/job.yaml",
                               "experiment": "scheduled",
                               "script_params": {"--epochs": 1, "--samples": 200}})
    spec["deployments"] = [retrain]
    prefect_file = tmp_path / "prefect.yaml"
    prefect_file.write_text(yaml.safe_dump(spec))
    deployed.cli(PREFECT, "--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file))
    deployment = deployed.call("GET", "/deployments/name/retrain/every-20s")
    try:
        deadline = time.monotonic() + 240
        while True:
            runs = deployed.call("POST", "/flow_runs/filter", {
                "deployments": {"id": {"any_": [deployment["id"]]}}})
            done = [r for r in runs if r["state"]["type"] == "COMPLETED"]
            if len(runs) >= 2 and done:
                break
            assert time.monotonic() < deadline, [r["state"]["type"] for r in runs]
            time.sleep(1)
        assert all(r["auto_scheduled"] for r in runs)
        assert ModelRegistry(deployed.workspace).versions("scheduled")
    finally:
        deployed.cli(PREFECT, "deployment", "delete", "retrain/every-20s")
        deadline = time.monotonic() + 120  # let runs already started finish
        while deployed.live_runs(deployment["id"]) and time.monotonic() < deadline:
            time.sleep(1)
