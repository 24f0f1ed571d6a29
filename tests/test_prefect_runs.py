"""Every submission is a real Prefect flow run, executed by Prefect's engine.

Runs are submitted from Python and from the CLI to the workspace's real embedded server and
worker, then read back from the real Prefect API: the task runs really ran, their events
were emitted, a failed job's launch task is Failed; Prefect's own cancel (`prefect flow-run
cancel`) and retry (`prefect flow-run retry`) work on them.
"""

from __future__ import annotations

import os
import subprocess
from datetime import datetime
from pathlib import Path

from conftest import TFSUBMIT, run_cli, wait_for_line, wait_until

from tfsubmit import Experiment, TensorFlow
from tfsubmit.api.runs import open_run
from tfsubmit.service.server import (
    concurrency_limit,
    deployment_ids,
    pool_name,
    server_status,
)
from tfsubmit.system.processes import processes_of_run

PREFECT = str(Path(TFSUBMIT[0]).with_name("prefect"))
STEPS = ["snapshot_source", "resolve_environment", "provision_nodes", "launch_topology",
         "collect_outputs"]


def _when(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _tasks(prefect_api, flow_run_id: str) -> dict[str, dict]:
    found = prefect_api("/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
    return {task["name"].rsplit("-", 1)[0]: task for task in found}


def _flow_run_ended(prefect_api, flow_run_id: str) -> dict:
    return wait_until(
        lambda: (lambda run: run if run["state"]["type"] in (
            "COMPLETED", "FAILED", "CANCELLED", "CRASHED") else None)(
            prefect_api(f"/flow_runs/{flow_run_id}")),
        60, "the flow run's final state")


def _task_run_events(prefect_api, task_ids: set[str]) -> list[str]:
    """The `prefect.task-run.*` events Prefect recorded for these task runs."""
    page = prefect_api("/events/filter", {
        "filter": {"event": {"prefix": ["prefect.task-run."]},
                   "resource": {"id": [f"prefect.task-run.{i}" for i in task_ids]}},
        "limit": 50})  # the API's largest page
    return [event["event"] for event in page["events"]]


def _prefect(workspace, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_API_URL": server_status(workspace).api_url,
           "PREFECT_HOME": str(workspace.prefect_home)}
    return subprocess.run([PREFECT, *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_a_python_submission_is_a_deployment_flow_run_whose_tasks_ran(workspace, prefect_api,
                                                                       job_dir):
    run = Experiment("real-flow", workspace=workspace.root).submit(
        TensorFlow(source_directory=str(job_dir), entry_script="finishes.py",
                   script_params=["2"]))
    flow_run_id = run.get_details()["flow_run_id"]
    assert run.get_portal_url().endswith(f"/runs/flow-run/{flow_run_id}")  # from submission on
    details = run.wait_for_completion(timeout=300)
    flow_run = _flow_run_ended(prefect_api, flow_run_id)
    assert flow_run["state"]["type"] == "COMPLETED"
    assert flow_run["deployment_id"] == deployment_ids(workspace)["submit-training"]
    # The concurrency limit is Prefect's own, on the pool's queue, where the UI shows it.
    queue = prefect_api(f"/work_pools/{pool_name(workspace)}/queues/default")
    assert queue["concurrency_limit"] == concurrency_limit()
    assert flow_run["name"] == run.id and "real-flow" in flow_run["tags"]
    tasks = _tasks(prefect_api, flow_run_id)
    assert sorted(tasks) == sorted(STEPS)
    for name, task in tasks.items():
        assert task["state"]["type"] == "COMPLETED", name
        assert task["run_count"] >= 1, name
        assert _when(task["start_time"]) < _when(task["end_time"]), name
    # The steps ran one after the other, and the launch task lasted the whole job (2 s).
    starts = [_when(tasks[name]["start_time"]) for name in STEPS]
    assert starts == sorted(starts)
    launch = tasks["launch_topology"]
    job_seconds = max(result["duration"] for result in details["processes"]) \
        if details.get("processes") else 2.0
    assert launch["total_run_time"] >= min(job_seconds, 2.0)
    assert _when(launch["end_time"]) - _when(launch["start_time"]) >= 2.0
    # The engine reported every state: Pending, Running and Completed for each task run.
    ids = {task["id"] for task in tasks.values()}
    events = wait_until(lambda: (lambda found: found if len(found) >= 3 * len(STEPS) else None)(
        _task_run_events(prefect_api, ids)), 30, "the task runs' events")
    assert sorted(set(events)) == ["prefect.task-run.Completed", "prefect.task-run.Pending",
                                   "prefect.task-run.Running"]


def test_automations_fire_on_its_task_run_events_and_it_sends_heartbeats(workspace,
                                                                         prefect_api, job_dir):
    """An automation made with Prefect's own SDK, triggered by `prefect.task-run.Completed`
    once per task run, fires for each of a submitted run's 5 steps; its flow run sends
    Prefect's heartbeat events (what Prefect's zombie detection reads)."""
    from prefect.automations import Automation, DoNothing, EventTrigger, Posture
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: server_status(workspace).api_url}):
        automation = Automation(
            name="each finished step",
            trigger=EventTrigger(expect={"prefect.task-run.Completed"},
                                 match={"prefect.resource.id": "prefect.task-run.*"},
                                 for_each={"prefect.resource.id"},
                                 posture=Posture.Reactive, threshold=1),
            actions=[DoNothing()]).create()
    try:
        run = Experiment("automated", workspace=workspace.root).submit(
            TensorFlow(source_directory=str(job_dir), entry_script="finishes.py",
                       script_params=["1"]))
        flow_run_id = run.wait_for_completion(timeout=300)["flow_run_id"]
        _flow_run_ended(prefect_api, flow_run_id)
        task_ids = {task["id"] for task in _tasks(prefect_api, flow_run_id).values()}

        def fired_for() -> set[str]:
            page = prefect_api("/events/filter", {"filter": {
                "event": {"name": ["prefect.automation.triggered"]},
                "resource": {"id": [f"prefect.automation.{automation.id}"]}}, "limit": 50})
            return {event["payload"]["triggering_event"]["resource"]["prefect.resource.id"]
                    .removeprefix("prefect.task-run.") for event in page["events"]}

        wait_until(lambda: task_ids <= fired_for(), 120,
                   "the automation to fire for each of the run's task runs")
    finally:
        with temporary_settings({PREFECT_API_URL: server_status(workspace).api_url}):
            automation.delete()
    beats = prefect_api("/events/filter", {"filter": {
        "event": {"name": ["prefect.flow-run.heartbeat"]},
        "resource": {"id": [f"prefect.flow-run.{flow_run_id}"]}}, "limit": 50})["events"]
    assert beats, "no heartbeat event for the flow run"


def _wheel(folder: Path, name: str, version: str) -> Path:
    """A real, minimal wheel of a one-module package."""
    import base64
    import hashlib
    import zipfile

    files = {f"{name}.py": f"VERSION = {version!r}\n",
             f"{name}-{version}.dist-info/METADATA":
                 f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{name}-{version}.dist-info/WHEEL":
                 "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}

    def digest(text: str) -> str:
        raw = hashlib.sha256(text.encode()).digest()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    record = [f"{path},sha256={digest(text)},{len(text)}" for path, text in files.items()]
    files[f"{name}-{version}.dist-info/RECORD"] = "\n".join(
        [*record, f"{name}-{version}.dist-info/RECORD,,"]) + "\n"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


def test_an_environment_download_that_fails_is_retried_by_prefect(workspace, prefect_api,
                                                                  job_dir, tmp_path,
                                                                  monkeypatch):
    """A package server that answers 503: the environment step fails with a network
    error, Prefect puts its task run in AwaitingRetry and runs it again; once the server
    answers, the run Completes with the package installed. A package that does not exist
    is not retried."""
    import http.server
    import shutil
    import threading

    wheel = _wheel(tmp_path, "retryprobe", "0.1")
    down = threading.Event()
    down.set()
    asked = []

    class Index(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(tmp_path), **kwargs)

        def do_GET(self):
            asked.append(self.path)
            if down.is_set():
                self.send_error(503, "Service Unavailable")
            else:
                super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Index)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{wheel.name}"
    monkeypatch.setenv("TFSUBMIT_STEP_RETRIES", "5")
    monkeypatch.setenv("TFSUBMIT_STEP_RETRY_DELAY", "2")
    monkeypatch.setenv("UV_HTTP_RETRIES", "0")
    (job_dir / "probe.py").write_text("import retryprobe\nprint('probe', retryprobe.VERSION)\n")
    experiment = Experiment("retried", workspace=workspace.root)
    run = experiment.submit(TensorFlow(source_directory=str(job_dir), entry_script="probe.py",
                                       pip_packages=[f"retryprobe @ {url}"]))
    flow_run_id = run.get_details()["flow_run_id"]
    try:
        wait_until(lambda: (_tasks(prefect_api, flow_run_id).get("resolve_environment", {})
                            .get("state") or {}).get("name") == "AwaitingRetry", 300,
                   "the environment step to await its retry")
        down.clear()
        details = run.wait_for_completion(timeout=900)
        assert "probe 0.1" in run.paths.output_log.read_text()
        task = _tasks(prefect_api, details["flow_run_id"])["resolve_environment"]
        assert task["state"]["type"] == "COMPLETED" and task["run_count"] >= 2
        assert any(path.endswith(wheel.name) for path in asked)

        # A package that is not there (404) is no network error: not retried, run Failed.
        missing = experiment.submit(TensorFlow(
            source_directory=str(job_dir), entry_script="probe.py",
            pip_packages=[f"retryprobe @ {url.replace('0.1-py3', '0.2-py3')}"]))
        failed = missing.wait_for_completion(timeout=300, raise_on_error=False)
        assert failed["status"] == "Failed"
        task = _tasks(prefect_api, failed["flow_run_id"])["resolve_environment"]
        assert task["state"]["type"] == "FAILED" and task["run_count"] == 1
    finally:
        server.shutdown()
        built = run.record.read().get("environment_hash")
        if built:  # a full environment, made for this test only
            shutil.rmtree(workspace.env_cache / built, ignore_errors=True)


def _launch_logs(prefect_api, flow_run_id: str, expected: int) -> list[dict]:
    launch = _tasks(prefect_api, flow_run_id)["launch_topology"]["id"]
    return wait_until(lambda: (lambda logs: logs if len(logs) >= expected else None)(
        prefect_api("/logs/filter", {"logs": {"task_run_id": {"any_": [launch]}},
                                     "limit": 200})), 30, f"{expected} log lines")


def test_a_jobs_stderr_reaches_prefect_at_warning_and_its_traceback_at_error(
        workspace, prefect_api, job_dir):
    (job_dir / "streams.py").write_text(
        "import sys\n"
        "print('to stdout', flush=True)\n"
        "print('to stderr', file=sys.stderr, flush=True)\n"
        "raise ValueError('boom')\n")
    run = Experiment("streams", workspace=workspace.root).submit(
        TensorFlow(source_directory=str(job_dir), entry_script="streams.py"))
    details = run.wait_for_completion(timeout=300, raise_on_error=False)
    assert details["status"] == "Failed"
    log = run.paths.output_log.read_text()
    assert "[worker:0@local] to stdout" in log and "[worker:0@local] to stderr" in log
    _flow_run_ended(prefect_api, details["flow_run_id"])
    levels = {entry["message"]: entry["level"]
              for entry in _launch_logs(prefect_api, details["flow_run_id"], 5)}
    assert levels["[worker:0@local] to stdout"] == 20
    assert levels["[worker:0@local] to stderr"] == 30
    assert levels["[worker:0@local] Traceback (most recent call last):"] == 40
    assert levels["[worker:0@local] ValueError: boom"] == 40
    assert any(level == 30 and 'File "' in message and "streams.py" in message
               for message, level in levels.items())  # the traceback's own lines


def test_a_failed_job_from_the_cli_fails_its_launch_task(workspace, prefect_api, job_dir):
    (job_dir / "job.yaml").write_text("source_directory: .\nentry_script: fail.py\n")
    result = run_cli("submit", str(job_dir / "job.yaml"), "--experiment", "real-fail")
    assert result.returncode == 1, result.stderr
    assert "/runs/flow-run/" in result.stderr  # the UI link, printed at submission
    run = open_run("latest", workspace=workspace.root)
    flow_run = _flow_run_ended(prefect_api, run.get_details()["flow_run_id"])
    assert flow_run["state"]["type"] == "FAILED"
    assert "exit code 3" in flow_run["state"]["message"] or "3" in flow_run["state"]["message"]
    tasks = _tasks(prefect_api, flow_run["id"])
    states = {name: task["state"]["type"] for name, task in tasks.items()}
    assert states == {**dict.fromkeys(STEPS, "COMPLETED"), "launch_topology": "FAILED"}
    # What the job wrote is kept all the same.
    assert (run.paths.outputs / "partial.txt").exists()


def test_prefect_flow_run_cancel_stops_the_run_in_order(workspace, prefect_api, job_dir):
    run = Experiment("real-cancel", workspace=workspace.root).submit(
        TensorFlow(source_directory=str(job_dir), entry_script="sleeper.py"))
    wait_for_line(run, "ready: sleeping")
    flow_run_id = run.get_details()["flow_run_id"]
    result = _prefect(workspace, "flow-run", "cancel", flow_run_id)
    assert result.returncode == 0, result.stdout + result.stderr
    details = run.wait_for_completion(timeout=120, raise_on_error=False)
    assert details["status"] == "Canceled", details
    flow_run = _flow_run_ended(prefect_api, flow_run_id)
    assert flow_run["state"]["type"] == "CANCELLED"
    assert _tasks(prefect_api, flow_run_id)["launch_topology"]["state"]["type"] == "CANCELLED"
    assert processes_of_run(run.id) == []  # the sleeper and both its children are gone
    assert "ready: sleeping" in run.paths.output_log.read_text()  # the log is kept


def _chromium():
    """A real headless Chromium (Debian's), driven by selenium through chromedriver."""
    import tempfile

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1400,1000",
                f"--user-data-dir={tempfile.mkdtemp(prefix='tfsubmit-chromium-')}"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def _button(browser, text: str, timeout: float = 60):
    from selenium.webdriver.common.by import By

    return wait_until(lambda: next((b for b in browser.find_elements(By.TAG_NAME, "button")
                                    if b.text.strip() == text), None),
                      timeout, f"the {text!r} button")


def test_the_ui_cancel_button_cancels_a_submitted_run(workspace, prefect_api, job_dir):
    """The run's page (its portal URL) has the Cancel button enabled while it runs; the
    cancel it sends stops the job in order and ends the run Canceled, nothing left."""
    run = Experiment("ui-cancel", workspace=workspace.root).submit(
        TensorFlow(source_directory=str(job_dir), entry_script="sleeper.py"))
    wait_for_line(run, "ready: sleeping")
    browser = _chromium()
    try:
        browser.get(run.get_portal_url())
        cancel = _button(browser, "Cancel")
        assert cancel.is_enabled()
        cancel.click()
        _button(browser, "Confirm").click()
        details = run.wait_for_completion(timeout=120, raise_on_error=False)
    finally:
        browser.quit()
    assert details["status"] == "Canceled", details
    assert details["reason"].startswith("canceled from Prefect")
    flow_run = _flow_run_ended(prefect_api, details["flow_run_id"])
    assert flow_run["state"]["type"] == "CANCELLED"
    assert _tasks(prefect_api, flow_run["id"])["launch_topology"]["state"]["type"] == "CANCELLED"
    assert processes_of_run(run.id) == []


def test_prefect_flow_run_retry_makes_attempt_2_and_keeps_attempt_1(workspace, prefect_api,
                                                                     job_dir):
    run = Experiment("real-retry", workspace=workspace.root).submit(
        TensorFlow(source_directory=str(job_dir), entry_script="fail.py"))
    first = run.wait_for_completion(timeout=300, raise_on_error=False)
    assert first["status"] == "Failed"
    flow_run_id = first["flow_run_id"]
    _flow_run_ended(prefect_api, flow_run_id)
    result = _prefect(workspace, "flow-run", "retry", flow_run_id)
    assert result.returncode == 0, result.stdout + result.stderr
    wait_until(lambda: run.record.read().get("attempt") == 2
               and run.get_status() == "Failed", 300, "attempt 2 to end")
    details = run.get_details()
    assert [a["attempt"] for a in details["attempts"]] == [1]
    kept = Path(details["attempts"][0]["folder"])
    assert (kept / "outputs" / "partial.txt").exists()
    assert "about to fail" in (kept / "output.log").read_text()
    assert (run.paths.outputs / "partial.txt").exists()  # attempt 2's own
    assert run.paths.output_log.read_text().count("about to fail") == 1
    assert prefect_api(f"/flow_runs/{flow_run_id}")["run_count"] == 2


def test_what_reaches_prefect_is_true_for_hostile_jobs(workspace, prefect_api, job_dir):
    """A metric named from a non-UTF-8 file name, NaN and huge values, 5,000 lines printed
    at once, and a job spec far over Prefect's 512 KB parameter limit: the run and its flow
    run end Completed, its metrics are published, and Prefect's log says which lines it
    left out (all of them are in output.log)."""
    (job_dir / "hostile.py").write_text(
        "import os, sys\n"
        "from tfsubmit import run_context\n"
        "ctx = run_context()\n"
        "ctx.log(os.fsdecode(b'loss-\\xff\\xfe'), 1.0)\n"
        "ctx.log('nan', float('nan'))\n"
        "ctx.log('huge', 1e308)\n"
        "for i in range(5000):\n"
        "    print(f'chatty line {i}')\n"
        "print('done', len(sys.argv) - 1, 'arguments', flush=True)\n")
    arguments = [f"--x{i}=" + "y" * 20 for i in range(30_000)]  # ~750 KB of job spec
    run = Experiment("hostile", workspace=workspace.root).submit(
        TensorFlow(source_directory=str(job_dir), entry_script="hostile.py",
                   script_params=arguments))
    details = run.wait_for_completion(timeout=300)
    assert run.paths.job.stat().st_size > 524_288
    assert f"done {len(arguments)} arguments" in run.paths.output_log.read_text()
    assert run.paths.output_log.read_text().count("chatty line") == 5000
    flow_run = _flow_run_ended(prefect_api, details["flow_run_id"])
    assert flow_run["state"]["type"] == "COMPLETED"
    assert set(flow_run["parameters"]) == {"run_id", "workspace"}
    table = wait_until(lambda: [a for a in prefect_api("/artifacts/filter", {
        "artifacts": {"flow_run_id": {"any_": [flow_run["id"]]}}}) if a["type"] == "table"],
        30, "the metrics table")[0]
    assert "loss-\\\\xff\\\\xfe" in table["data"] and "huge" in table["data"]
    launch = _tasks(prefect_api, flow_run["id"])["launch_topology"]["id"]

    def logged():
        entries, offset = [], 0
        while page := prefect_api("/logs/filter", {"logs": {"task_run_id": {"any_": [launch]}},
                                                   "offset": offset, "limit": 200}):
            entries += page
            offset += len(page)
        return entries

    said = wait_until(lambda: [e for e in logged() if e["level"] == 30
                               and "left out of Prefect's log" in e["message"]],
                      30, "the warning that lines were left out")
    shipped = sum("chatty line" in e["message"] for e in logged())
    left_out = int(said[0]["message"].split()[0])
    assert shipped + left_out >= 5000 and left_out > 0


def test_a_run_folder_deleted_mid_run_stops_the_job_and_says_so(workspace, prefect_api,
                                                                 job_dir):
    """Issue 27 (15): the job stops (its processes, in order), its flow run ends Failed
    saying the folder was deleted, and `tfsubmit logs --follow` says so and exits 2, no
    traceback (it crashed, the job ran on, and `runs` said Running forever before)."""
    import shutil

    run = Experiment("deleted", workspace=workspace.root).submit(
        TensorFlow(source_directory=str(job_dir), entry_script="sleeper.py"))
    wait_for_line(run, "ready: sleeping")
    follower = subprocess.Popen([*TFSUBMIT, "logs", run.id, "--follow"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while "ready: sleeping" not in follower.stdout.readline():  # it follows the folder's log
        assert follower.poll() is None
    flow_run_id = run.get_details()["flow_run_id"]
    shutil.rmtree(run.paths.root)
    out, err = follower.communicate(timeout=120)
    assert follower.returncode == 2, out + err
    assert "was deleted while it ran" in err and "Traceback" not in err
    wait_until(lambda: processes_of_run(run.id) == [], 120, "the job's processes to stop")
    flow_run = _flow_run_ended(prefect_api, flow_run_id)
    assert flow_run["state"]["type"] == "FAILED"
    assert "was deleted while it ran" in flow_run["state"]["message"]
    listed = [line for line in run_cli("runs", "--experiment", "deleted").stdout.splitlines()
              if line.startswith(run.id)]
    assert len(listed) == 1 and " Failed " in listed[0]  # from Prefect: no Running forever
