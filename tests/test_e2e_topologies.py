"""TensorFlow's own topologies (TF_CONFIG fan-out), real training, local and over SSH."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest
from conftest import ROOT, wait_for_line

from tfsubmit import Experiment, TensorFlow
from tfsubmit.system.processes import processes_of_run

pytestmark = pytest.mark.e2e
PS_EXAMPLE = ROOT / "examples" / "ps-synthetic"
MW_EXAMPLE = ROOT / "examples" / "multiworker-synthetic"


def _ps_job(**changes) -> TensorFlow:
    return TensorFlow(**{"source_directory": str(PS_EXAMPLE), "entry_script": "train.py",
                         "script_params": {"--epochs": 2, "--steps-per-epoch": 12},
                         "distributed_backend": "ps", "worker_count": 2,
                         "parameter_server_count": 1, "chief": True, **changes})


def _assert_ps_trained(run, details):
    log = run.paths.output_log.read_text()
    # Variables lived on the parameter server; both workers ran steps.
    assert "variable sequential/dense/kernel on /job:ps/replica:0/task:0" in log
    metrics = run.get_metrics()
    assert metrics["steps_worker_0"] > 0 and metrics["steps_worker_1"] > 0  # logged once
    assert metrics["steps_worker_0"] + metrics["steps_worker_1"] == 24
    assert len(metrics["loss"]) == 2
    assert (run.paths.outputs / "model.weights.h5").is_file()
    # The job ended with the chief; tfsubmit then stopped the servers: none is left.
    codes = details["exit_codes"]
    assert codes[next(k for k in codes if k.startswith("chief:0@"))] == 0
    assert "stopping 3 process(es): the job is done" in log
    assert processes_of_run(run.id) == []


def test_parameter_servers_on_the_local_target(workspace):
    run = Experiment("ps-local", workspace=workspace.root).submit(_ps_job())
    details = run.wait_for_completion(timeout=600)
    assert set(details["exit_codes"]) == {"chief:0@local", "worker:0@local", "worker:1@local",
                                          "ps:0@local"}
    _assert_ps_trained(run, details)


def test_parameter_servers_across_two_ssh_hosts(workspace, hosts):
    from test_ssh import add_target

    job = _ps_job(node_count=2, compute_target=add_target(workspace, hosts))
    run = Experiment("ps-ssh", workspace=workspace.root).submit(job)
    details = run.wait_for_completion(timeout=600)
    assert set(details["exit_codes"]) == {"chief:0@127.0.0.2", "worker:0@127.0.0.3",
                                          "worker:1@127.0.0.2", "ps:0@127.0.0.3"}
    _assert_ps_trained(run, details)


def _assert_mw_trained(run, last_worker: str) -> None:
    """Both workers trained together: worker 1 saw 2 replicas, the final weights are the
    same on both, the model was saved."""
    log = run.paths.output_log.read_text()
    assert f"[{last_worker}] worker 1 of 2 replicas" in log
    checksums = {line.split("weights checksum ")[1] for line in log.splitlines()
                 if "weights checksum" in line}
    assert len(checksums) == 1  # both workers end with the same weights
    assert (run.paths.outputs / "model.weights.h5").is_file()


def test_multiworker_on_the_local_target(workspace):
    job = TensorFlow(source_directory=str(MW_EXAMPLE), entry_script="train.py",
                     script_params={"--epochs": 2, "--steps-per-epoch": 5},
                     distributed_backend="multiworker", process_count_per_node=2)
    run = Experiment("mw-local", workspace=workspace.root).submit(job)
    details = run.wait_for_completion(timeout=600)
    assert details["exit_codes"] == {"worker:0@local": 0, "worker:1@local": 0}
    _assert_mw_trained(run, "worker:1@local")
    assert processes_of_run(run.id) == []


# -- faults: restarts and the watchdog ----------------------------------------------------


def _pid_of(run_id: str, role: str, index: int) -> int:
    for pid in processes_of_run(run_id):
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"TFSUBMIT_ROLE={role}".encode() in environ and \
                f"TFSUBMIT_INDEX={index}".encode() in environ:
            return pid
    raise AssertionError(f"no {role}:{index} process in run {run_id}")


LONG = {"--epochs": 6, "--steps-per-epoch": 40}


def test_killed_worker_is_restarted_alone_and_the_job_completes(workspace):
    run = Experiment("ps-kill-worker", workspace=workspace.root).submit(
        _ps_job(script_params=LONG, max_restarts=2))
    wait_for_line(run, "[chief:0@local] epoch 1:")
    os.kill(_pid_of(run.id, "worker", 1), signal.SIGKILL)
    details = run.wait_for_completion(timeout=600)
    assert [(r["task"], r["action"]) for r in details["restarts"]] == [("worker:1@local", "task")]
    assert details["restarts"][0]["exit_code"] == -9
    assert run.get_metrics()["epoch"][-1] == 6
    assert "restart 1 of 2: worker:1@local failed with signal 9; restarting it alone" in \
        run.paths.output_log.read_text()
    assert processes_of_run(run.id) == []


def test_killed_parameter_server_restarts_the_gang_which_resumes(workspace, prefect_api):
    run = Experiment("ps-kill-ps", workspace=workspace.root).submit(
        _ps_job(script_params=LONG, max_restarts=1))
    wait_for_line(run, "[chief:0@local] epoch 2:")
    os.kill(_pid_of(run.id, "ps", 0), signal.SIGKILL)
    details = run.wait_for_completion(timeout=600)
    assert [(r["task"], r["action"]) for r in details["restarts"]] == [("ps:0@local", "gang")]
    log = run.paths.output_log.read_text()
    assert "[chief:0@local] resumed from epoch" in log  # from the checkpoint, not from zero
    epochs = run.get_metrics()["epoch"]
    assert epochs[-1] == 6 and epochs.count(1.0) == 1  # epoch 1 was not trained again
    summary = next(a for a in prefect_api("/artifacts/filter", {"artifacts": {
        "flow_run_id": {"any_": [details["flow_run_id"]]}}}) if a["key"].endswith("-summary"))
    assert "| 1 | ps:0@local | -9 | gang |" in summary["data"]
    # The per-process table counts the ps's restart.
    assert re.search(r"\| ps:0@local \| -?\d+ \| 1 \|", summary["data"]), summary["data"]
    assert processes_of_run(run.id) == []


def test_exhausted_restarts_fail_with_the_last_error_and_keep_checkpoints(workspace):
    run = Experiment("ps-exhausted", workspace=workspace.root).submit(
        _ps_job(script_params=LONG, max_restarts=0))
    wait_for_line(run, "[chief:0@local] epoch 1:")
    os.kill(_pid_of(run.id, "ps", 0), signal.SIGKILL)
    details = run.wait_for_completion(timeout=300, raise_on_error=False)
    assert details["status"] == "Failed"
    assert details["reason"] == "ps:0@local failed with signal 9"
    assert (run.paths.outputs / "checkpoints" / "checkpoint").is_file()
    assert (run.paths.logs / "ps-0.log").is_file() and (run.paths.logs / "chief-0.log").is_file()
    assert processes_of_run(run.id) == []


def test_frozen_worker_trips_the_watchdog(workspace):
    run = Experiment("ps-frozen", workspace=workspace.root).submit(
        _ps_job(script_params={"--epochs": 100, "--steps-per-epoch": 40},
                hang_timeout_seconds=8))
    wait_for_line(run, "[chief:0@local] epoch 1:")
    frozen = _pid_of(run.id, "worker", 0)
    os.kill(frozen, signal.SIGSTOP)
    try:
        details = run.wait_for_completion(timeout=120, raise_on_error=False)
    finally:
        os.kill(frozen, signal.SIGCONT) if frozen in processes_of_run(run.id) else None
    assert details["status"] == "Failed"
    assert details["reason"].startswith("hung: no log line and no metric for 8 s")
    assert "silent tasks: chief:0@local" in details["reason"]
    assert processes_of_run(run.id) == []


def test_multiworker_failure_restarts_the_gang_which_resumes(workspace):
    job = TensorFlow(source_directory=str(MW_EXAMPLE), entry_script="train.py",
                     script_params={"--epochs": 6, "--steps-per-epoch": 40},
                     distributed_backend="multiworker", process_count_per_node=2,
                     max_restarts=1)
    run = Experiment("mw-restart", workspace=workspace.root).submit(job)
    wait_for_line(run, "[worker:1@local] epoch 2:")
    os.kill(_pid_of(run.id, "worker", 1), signal.SIGKILL)
    details = run.wait_for_completion(timeout=600)
    assert [(r["task"], r["action"]) for r in details["restarts"]] == [
        ("worker:1@local", "gang")]
    log = run.paths.output_log.read_text()
    assert "[worker:0@local] resumed from epoch" in log
    assert "[worker:1@local] resumed from epoch" in log
    assert log.count("weights checksum") == 2
    assert processes_of_run(run.id) == []
