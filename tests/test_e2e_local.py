"""End to end on the local target: real TensorFlow, a real Prefect server, the API and CLI."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import time

import pytest
from conftest import EXAMPLE, TFSUBMIT, run_cli, wait_until

from tfsubmit import Experiment, Run, TensorFlow
from tfsubmit.errors import RunFailedError, TargetError
from tfsubmit.system.processes import processes_of_run

pytestmark = pytest.mark.e2e
STEPS = {"snapshot_source", "resolve_environment", "provision_nodes", "launch_topology",
         "collect_outputs"}


def example_job(**changes) -> TensorFlow:
    spec = {"source_directory": str(EXAMPLE), "entry_script": "train.py",
            "script_params": {"--epochs": 2, "--samples": 512}, **changes}
    return TensorFlow(**spec)


def test_api_trains_the_example_and_reports_everything(workspace, prefect_api, capsys, tmp_path):
    run = Experiment("e2e-api", workspace=workspace.root).submit(example_job())
    details = run.wait_for_completion(show_output=True, timeout=600)

    printed = capsys.readouterr().out
    assert "[worker:0@local] Epoch 1/2" in printed
    assert "[tfsubmit] snapshot " in printed
    assert details["status"] == run.get_status() == "Completed"
    assert details["exit_code"] == 0

    metrics = run.get_metrics()
    assert metrics["epoch"] == [1.0, 2.0]
    assert len(metrics["loss"]) == len(metrics["accuracy"]) == len(metrics["val_loss"]) == 2

    copied = run.download_files(prefix="outputs/", output_directory=tmp_path / "out")
    names = sorted(p.relative_to(tmp_path / "out").as_posix() for p in copied)
    assert names == ["outputs/history.json", "outputs/model.keras"]
    history = json.loads((tmp_path / "out/outputs/history.json").read_text())
    assert history["loss"] == metrics["loss"]

    manifest = json.loads(run.paths.manifest.read_text())
    assert "train.py" in manifest["files"] and manifest["hash"] == details["snapshot_hash"]
    assert "tensorflow-cpu==2.21.0" in run.paths.freeze.read_text()

    # The run is a real Prefect flow run, one task run per pipeline step, with artifacts.
    flow_run = wait_until(lambda: (lambda found: found if found["state"]["type"] == "COMPLETED"
                                   else None)(prefect_api(f"/flow_runs/{details['flow_run_id']}")),
                          30, "the flow run Completed (reported as the flow returns)")
    assert flow_run["name"] == run.id
    tasks = prefect_api("/task_runs/filter",
                        {"flow_runs": {"id": {"any_": [details["flow_run_id"]]}}})
    assert {t["name"].rsplit("-", 1)[0] for t in tasks} == STEPS
    assert all(t["state"]["type"] == "COMPLETED" for t in tasks)
    artifacts = prefect_api("/artifacts/filter",
                            {"artifacts": {"flow_run_id": {"any_": [details["flow_run_id"]]}}})
    by_key = {a["key"].rsplit("-", 1)[1]: a for a in artifacts}
    assert {key: a["type"] for key, a in by_key.items()} == {
        "metrics": "table", "progress": "progress", "summary": "markdown", "outputs": "markdown",
        "curves": "markdown"}
    # Issue 28: the curves are a PNG; values read at 4 significant digits; the outputs
    # artifact lists the files and how to download them.
    png = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", by_key["curves"]["data"])
    assert png and base64.b64decode(png[1]).startswith(b"\x89PNG\r\n\x1a\n")
    assert all(v == float(f"{v:.4g}") for row in json.loads(by_key["metrics"]["data"])
               for v in [*row["values"], row["last"], row["min"], row["max"]])
    assert "| `outputs/model.keras` |" in by_key["outputs"]["data"]
    assert f"tfsubmit download {run.id} --prefix outputs/" in by_key["outputs"]["data"]
    assert "Completed" in by_key["summary"]["data"]
    rows = json.loads(by_key["metrics"]["data"])
    assert {row["metric"] for row in rows} >= {"loss", "accuracy", "epoch"}
    assert by_key["progress"]["data"] == 100.0
    # The job's lines reach the Prefect run log of the launch_topology task, live.
    launch = next(t["id"] for t in tasks if t["name"].startswith("launch_topology"))
    wait_until(
        lambda: any("[worker:0@local] Epoch 2/2" in entry["message"] for entry in prefect_api(
            "/logs/filter", {"logs": {"task_run_id": {"any_": [launch]}},
                             "sort": "TIMESTAMP_ASC", "limit": 200})),
        30, "the job's forwarded log lines in the Prefect API")
    # Even the very last line, logged just before the flow run's process exits, reaches
    # the API (Prefect's exit hooks send it: the forked engine exits as a process would).
    collect = next(t["id"] for t in tasks if t["name"].startswith("collect_outputs"))
    wait_until(lambda: f"[tfsubmit] run {run.id} Completed" in [
        entry["message"] for entry in prefect_api(
            "/logs/filter", {"logs": {"task_run_id": {"any_": [collect]}}, "limit": 200})],
        30, "the run's last log line in the Prefect API")


def test_same_spec_again_installs_nothing(workspace):
    experiment = Experiment("e2e-reuse", workspace=workspace.root)
    first = experiment.submit(example_job(script_params={"--epochs": 1, "--samples": 256}))
    first.wait_for_completion(timeout=600)
    second = experiment.submit(example_job(script_params={"--epochs": 1, "--samples": 256}))
    details = second.wait_for_completion(timeout=300)
    assert details["environment_reused"] is True
    assert details["environment_hash"] == first.get_details()["environment_hash"]
    log = second.paths.output_log.read_text()
    assert "[tfsubmit:env]" not in log  # no installer ran
    assert "0 new to the store, 0 bytes copied)" in log
    # The job's interpreter has TensorFlow and tfsubmit's runtime, but not Prefect.
    marker = workspace.env_cache / details["environment_hash"] / ".tfsubmit-env.json"
    python = json.loads(marker.read_text())["python"]
    probe = subprocess.run([python, "-c", "import prefect"], capture_output=True)
    assert probe.returncode != 0


def test_cli_submit_runs_show_and_logs(workspace, tmp_path):
    result = run_cli("submit", str(EXAMPLE / "job.yaml"), "--experiment", "e2e-cli", timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[worker:0@local] Epoch 3/3" in result.stdout
    assert "  loss: [" in result.stdout
    run_id = result.stdout.split("Submitted run ", 1)[1].split()[0]

    listing = run_cli("runs", "--experiment", "e2e-cli")
    row = next(line for line in listing.stdout.splitlines() if line.startswith(run_id))
    assert "Completed" in row

    shown = json.loads(run_cli("show", run_id, "--json").stdout)
    assert shown["status"] == "Completed" and shown["exit_code"] == 0
    assert set(shown["metrics"]) >= {"loss", "accuracy", "val_loss"}
    assert "scikit-learn" in (workspace.runs / run_id / "pip-freeze.txt").read_text()
    # For people (issue 28): a screenful, values at 4 significant digits, one duration.
    summary = run_cli("show", run_id).stdout
    assert f"Run {run_id}: Completed" in summary, summary
    assert "from submit to end (training" in summary and "steps       snapshot" in summary
    last = shown["metrics"]["val_loss"][-1]
    assert f"    {'val_loss':24} {last:.4g} (3 values)" in summary, summary
    assert "outputs/model.keras" in summary and f"tfsubmit download {run_id}" in summary
    assert len(summary.splitlines()) < 40
    downloaded = run_cli("download", run_id, "--prefix", "outputs/", "--to", str(tmp_path))
    assert downloaded.returncode == 0 and (tmp_path / "outputs" / "model.keras").is_file()
    assert run_cli("download", run_id, "--prefix", "nothing/").returncode == 2
    by_metric = run_cli("runs", "--experiment", "e2e-cli", "--metric", "val_loss").stdout
    row = next(line for line in by_metric.splitlines() if line.startswith(run_id))
    assert f" {last:.4g} * " in row, by_metric  # its value, marked the experiment's best

    logs = run_cli("logs", run_id).stdout
    assert "[worker:0@local] Epoch 1/3" in logs and f"[tfsubmit] run {run_id} Completed" in logs


def test_exit_code_3_fails_and_keeps_logs_and_outputs(workspace, prefect_api, job_dir):
    job = TensorFlow(source_directory=str(job_dir), entry_script="fail.py")
    run = Experiment("e2e-fail", workspace=workspace.root).submit(job)
    with pytest.raises(RunFailedError, match="exit code 3"):
        run.wait_for_completion(timeout=300)
    details = run.get_details()
    assert details["status"] == "Failed" and details["exit_code"] == 3
    assert details["reason"] == "worker:0@local failed with exit code 3"
    log = run.paths.output_log.read_text()
    assert "[worker:0@local] about to fail with exit code 3" in log
    assert "[worker:0@local] this goes to stderr" in log
    assert (run.paths.logs / "worker-0.log").is_file()
    assert (run.paths.outputs / "partial.txt").read_text() == "written before the failure\n"
    assert run.get_metrics() == {"loss": 1.5}
    # The engine reports the flow run's end as the flow returns, a moment after the record.
    wait_until(lambda: prefect_api(f"/flow_runs/{details['flow_run_id']}")["state"]["type"]
               == "FAILED", 30, "the flow run Failed")


def test_cli_reports_failure_with_exit_code_1(workspace, job_dir):
    (job_dir / "job.yaml").write_text("source_directory: .\nentry_script: fail.py\n")
    result = run_cli("submit", str(job_dir / "job.yaml"))
    assert result.returncode == 1
    assert "Failed: worker:0@local failed with exit code 3" in result.stdout
    # Said once: the run's last log line; the closing line only points at the logs.
    assert (result.stdout + result.stderr).count("failed with exit code 3") == 1
    assert f"Failed; logs kept in {workspace.root}" in result.stderr


def test_cancel_mid_training_leaves_no_process(workspace, prefect_api):
    job = example_job(script_params={"--epochs": 100000, "--samples": 256})
    run = Experiment("e2e-cancel", workspace=workspace.root).submit(job)
    wait_until(lambda: run.get_metrics().get("epoch"), 300, "the first epoch's metric")
    assert run.get_status() == "Running"
    assert processes_of_run(run.id)
    run.cancel()
    details = run.get_details()
    assert details["status"] == "Canceled"
    assert processes_of_run(run.id) == []
    assert "[tfsubmit] stopping 1 process(es): canceled by the user" in \
        run.paths.output_log.read_text()
    wait_until(lambda: prefect_api(f"/flow_runs/{details['flow_run_id']}")["state"]["type"]
               == "CANCELLED", 30, "the flow run Cancelled")


def test_cli_cancel_also_stops_children_that_left_the_group(workspace, job_dir):
    (job_dir / "job.yaml").write_text("source_directory: .\nentry_script: sleeper.py\n")
    submitted = run_cli("submit", str(job_dir / "job.yaml"), "--detach")
    assert submitted.returncode == 0, submitted.stderr
    run = Run(submitted.stdout.split("Submitted run ", 1)[1].split()[0])
    wait_until(lambda: "ready: sleeping" in run.paths.output_log.read_text(), 300, "the job")
    assert len(processes_of_run(run.id)) == 3  # the script, its child, the setsid child
    result = run_cli("cancel", run.id)
    assert result.returncode == 0, result.stderr
    assert "-> Canceled" in result.stdout
    assert processes_of_run(run.id) == []


def test_max_run_duration_stops_the_run(workspace, job_dir):
    job = TensorFlow(source_directory=str(job_dir), entry_script="sleeper.py",
                     max_run_duration_seconds=3)
    run = Experiment("e2e-timeout", workspace=workspace.root).submit(job)
    details = run.wait_for_completion(timeout=300, raise_on_error=False)
    assert details["status"] == "Failed"
    assert details["reason"] == "exceeded max_run_duration_seconds=3"
    assert details["training_seconds"] < 20  # the job was stopped at 3 s
    assert details["duration"] >= details["training_seconds"]  # submit to end (issue 28)
    assert "ready: sleeping" in run.paths.output_log.read_text()
    assert processes_of_run(run.id) == []


def test_script_params_arrive_literally(workspace, job_dir):
    job = TensorFlow(source_directory=str(job_dir), entry_script="echo_args.py",
                     script_params={"--name": "; touch /tmp/tfsubmit-pwned", "--n": 2},
                     environment_variables={"MY_SETTING": "$HOME"})
    run = Experiment("e2e-args", workspace=workspace.root).submit(job)
    run.wait_for_completion(timeout=300)
    seen = json.loads((run.paths.outputs / "seen.json").read_text())
    assert seen == {"argv": ["--name", "; touch /tmp/tfsubmit-pwned", "--n", "2"],
                    "MY_SETTING": "$HOME"}


def test_unknown_target_fails_before_a_run_exists(workspace):
    experiment = Experiment("e2e-refused", workspace=workspace.root)
    with pytest.raises(TargetError, match="compute_target: unknown target 'gpu-cluster'"):
        experiment.submit(example_job(compute_target="gpu-cluster"))
    assert experiment.get_runs() == []


def test_cli_bad_job_file_names_the_field(tmp_path):
    (tmp_path / "train.py").write_text("")
    (tmp_path / "job.yaml").write_text("source_directory: .\nentry_script: train.py\n"
                                       "distributed_backend: horovod\n")
    result = subprocess.run([*TFSUBMIT, "submit", str(tmp_path / "job.yaml")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "distributed_backend: Input should be 'mpi', 'ps' or 'multiworker'" in result.stderr


def test_cli_bad_step_retry_setting_names_the_variable(workspace, tmp_path):
    (tmp_path / "train.py").write_text("")
    (tmp_path / "job.yaml").write_text("source_directory: .\nentry_script: train.py\n")
    before = sorted(workspace.runs.iterdir()) if workspace.runs.exists() else []
    result = subprocess.run([*TFSUBMIT, "submit", str(tmp_path / "job.yaml")],
                            capture_output=True, text=True,
                            env={**os.environ, "TFSUBMIT_STEP_RETRIES": "twice"})
    assert result.returncode == 2, result.stderr
    assert "TFSUBMIT_STEP_RETRIES='twice': give a whole number of retries" in result.stderr
    assert (sorted(workspace.runs.iterdir()) if workspace.runs.exists() else []) == before


def test_a_metric_too_large_for_a_float_is_refused_at_the_call(workspace, tmp_path):
    """Issue 27 (6): `log("count", 10**400)` raises at the call, naming the metric; the
    run Fails with that reason and `tfsubmit submit` says so, exit 1, no OverflowError."""
    (tmp_path / "huge.py").write_text("from tfsubmit import run_context\n"
                                      "run_context().log('count', 10**400)\n")
    (tmp_path / "job.yaml").write_text("source_directory: .\nentry_script: huge.py\n")
    result = run_cli("submit", str(tmp_path / "job.yaml"), "--experiment", "huge")
    assert result.returncode == 1, result.stdout + result.stderr
    said = result.stdout + result.stderr
    assert "log('count'): 10000000000000000000... (401 digits) is too large" in said
    assert "OverflowError" not in said


def test_odd_metrics_and_output_reach_the_terminal_tamed(workspace, tmp_path, capsys):
    """Issue 27 (12, 16): wait_for_completion(show_output=True, timeout=5) returns after
    about 5 s on a job that printed once and went quiet; `show` prints strict JSON (NaN as
    "NaN") with a 10 MB string metric cut short; a job's escape codes are shown, not
    obeyed, by `logs` and show_output."""
    (tmp_path / "odd.py").write_text(
        "import time\n"
        "from tfsubmit import run_context\n"
        "ctx = run_context()\n"
        "ctx.log('ratio', float('nan'))\n"
        "ctx.log('blob', 'x' * 10_000_000)\n"
        "print('\\x1b]0;owned\\x07\\x1b[31mred', flush=True)\n"
        "time.sleep(120)\n")
    run = Experiment("odd", workspace=workspace.root).submit(
        TensorFlow(source_directory=str(tmp_path), entry_script="odd.py"))
    try:
        wait_until(lambda: "red" in run.paths.output_log.read_text(), 300, "the job's line")
        began = time.monotonic()
        with pytest.raises(TimeoutError, match="still Running after 5 s"):
            run.wait_for_completion(show_output=True, timeout=5)
        assert time.monotonic() - began < 15
        shown = capsys.readouterr().out
        assert "\\x1b]0;owned\\x07\\x1b[31mred" in shown and "\x1b" not in shown

        def strict(text):
            return json.loads(text, parse_constant=lambda word: pytest.fail(f"{word} in JSON"))

        details = strict(run_cli("show", run.id, "--json").stdout)
        assert details["metrics"]["ratio"] == "NaN"
        assert details["metrics"]["blob"].endswith("[10,000,000 characters in all; "
                                                   "Run.get_metrics() or the run folder's "
                                                   "files hold all of it]")
        assert len(details["metrics"]["blob"]) < 3000
        logged = run_cli("logs", run.id).stdout
        assert "\\x1b[31mred" in logged and "\x1b" not in logged
    finally:
        run.cancel()


SAVER = r'''
import signal, subprocess, sys, time
CHILD = """
import os, signal, sys, time
def save(*_):
    print('saving checkpoint', flush=True)
    time.sleep(3)
    open(os.path.join('outputs', 'ckpt'), 'w').write('saved')
    print('checkpoint saved', flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, save)
print('child ready', flush=True)
while True:
    time.sleep(1)
"""
subprocess.Popen([sys.executable, '-c', CHILD])
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # the leader leaves at once
while True:
    time.sleep(1)
'''


def test_cancel_gives_a_jobs_children_their_grace_too(workspace, tmp_path):
    """Issue 27 (8): TERM, 10 s, KILL holds for every process of the run: a child whose
    SIGTERM handler takes 3 s to save its checkpoint saves it, though its group's leader
    exits at once."""
    (tmp_path / "saver.py").write_text(SAVER)
    run = Experiment("grace", workspace=workspace.root).submit(
        TensorFlow(source_directory=str(tmp_path), entry_script="saver.py"))
    wait_until(lambda: "child ready" in run.paths.output_log.read_text(), 300, "the child")
    run.cancel()
    assert run.get_status() == "Canceled"
    log = run.paths.output_log.read_text()
    assert "saving checkpoint" in log and "checkpoint saved" in log, log
    assert (run.paths.outputs / "ckpt").read_text() == "saved"
    assert processes_of_run(run.id) == []


def test_the_run_takes_the_submitters_environment(workspace, job_dir, monkeypatch):
    """The flow run is started by the workspace's worker, yet its job sees the submitting
    shell's environment (handed to the fork server in memory); a fork server that was
    stopped is back with the next submission."""
    from tfsubmit.service import forkserver

    experiment = Experiment("e2e-env", workspace=workspace.root)
    job = TensorFlow(source_directory=str(job_dir), entry_script="echo_args.py")
    for attempt in ("first", "after-a-stop"):
        if attempt == "after-a-stop":
            forkserver.stop(workspace)
        monkeypatch.setenv("MY_SETTING", f"from-the-shell-{attempt}")
        run = experiment.submit(job)
        run.wait_for_completion(timeout=300)
        seen = json.loads((run.paths.outputs / "seen.json").read_text())
        assert seen["MY_SETTING"] == f"from-the-shell-{attempt}"
        assert forkserver.is_current(workspace)
