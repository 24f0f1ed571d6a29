"""TensorFlow's own topologies (TF_CONFIG fan-out), real training, local and over SSH."""

from __future__ import annotations

import pytest
from conftest import ROOT

from tfsubmit import Experiment, TensorFlow
from tfsubmit.procfs import processes_of_run

pytestmark = pytest.mark.e2e
PS_EXAMPLE = ROOT / "examples" / "ps-synthetic"
MW_EXAMPLE = ROOT / "examples" / "multiworker-synthetic"


def _ps_job(**changes) -> TensorFlow:
    return TensorFlow(**{"source_directory": str(PS_EXAMPLE), "entry_script": "train.py",
                         "script_params": {"--epochs": 2, "--steps-per-epoch": 12},
                         "distributed_backend": "ps", "worker_count": 2,
                         "parameter_server_count": 1, **changes})


def _assert_ps_trained(run, details):
    log = run.paths.output_log.read_text()
    # Variables lived on the parameter server; both workers ran steps.
    assert "variable sequential/dense/kernel on /job:ps/replica:0/task:0" in log
    metrics = run.get_metrics()
    assert metrics["steps_worker_0"][-1] > 0 and metrics["steps_worker_1"][-1] > 0
    assert metrics["steps_worker_0"][-1] + metrics["steps_worker_1"][-1] == 24
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


def test_multiworker_on_the_local_target(workspace):
    job = TensorFlow(source_directory=str(MW_EXAMPLE), entry_script="train.py",
                     script_params={"--epochs": 2, "--steps-per-epoch": 5},
                     distributed_backend="multiworker", process_count_per_node=2)
    run = Experiment("mw-local", workspace=workspace.root).submit(job)
    details = run.wait_for_completion(timeout=600)
    assert details["exit_codes"] == {"worker:0@local": 0, "worker:1@local": 0}
    log = run.paths.output_log.read_text()
    assert "[worker:1@local] worker 1 of 2 replicas" in log
    checksums = {line.split("weights checksum ")[1] for line in log.splitlines()
                 if "weights checksum" in line}
    assert len(checksums) == 1  # both workers end with the same weights
    assert (run.paths.outputs / "model.weights.h5").is_file()
    assert processes_of_run(run.id) == []
