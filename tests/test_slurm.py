"""The Slurm target on a real cluster: slurmctld, munged and two slurmd, each node in its
own network namespace (tests/slurmcluster.py); real sbatch, srun, scancel, requeue."""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, run_cli, wait_for_line
from test_e2e_horovod import _checksums
from test_e2e_topologies import MW_EXAMPLE, _assert_mw_trained, _assert_ps_trained, _ps_job

from tfsubmit import Experiment, TensorFlow
from tfsubmit.store.layout import default_env_cache
from tfsubmit.system.processes import processes_of_run
from tfsubmit.targets.config import SlurmTargetConfig, save_target

pytestmark = pytest.mark.e2e
HVD_EXAMPLE = ROOT / "examples" / "horovod-synthetic"


def add_slurm_target(workspace, slurm, tmp_path: Path, **extra) -> str:
    """A slurm target on the test cluster; environments in the shared test cache (this
    machine's disk is every node's), so TensorFlow's is built once for the suite."""
    name = f"slurm-{uuid.uuid4().hex[:6]}"
    save_target(workspace.root, name, SlurmTargetConfig(
        workdir=str(tmp_path / "shared"), env=slurm.env, env_cache=str(default_env_cache()),
        **extra))
    return name


def _job_id(run) -> str:
    return run._record()["slurm_job_id"]


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def _assert_nothing_left(run, slurm) -> None:
    assert not set(run._record().get("slurm_jobs", [])) & set(slurm.jobs())
    assert processes_of_run(run.id) == []  # on every node: one machine, one process table


def test_single_node_job(workspace, slurm, job_dir, tmp_path):
    target = add_slurm_target(workspace, slurm, tmp_path)
    run = Experiment("slurm-single", workspace=workspace.root).submit(TensorFlow(
        source_directory=str(job_dir), entry_script="echo_args.py",
        script_params={"--lr": 0.5}, compute_target=target,
        environment_variables={"MY_SETTING": "on-slurm"}))
    details = run.wait_for_completion(timeout=600)
    assert details["exit_codes"] == {"worker:0@node1": 0}
    log = run.paths.output_log.read_text()
    assert '[worker:0@node1] {"argv": ["--lr", "0.5"], "MY_SETTING": "on-slurm"}' in log
    job_id = _job_id(run)
    assert re.search(rf"Slurm job {job_id} running on node1 after [\d.]+ s in the queue", log)
    assert (run.paths.outputs / "seen.json").is_file()
    script = (run.paths.logs / "slurm" / "attempt-1.sh").read_text()
    assert "#SBATCH --nodes=1" in script and f"#SBATCH --job-name=tfsubmit-{run.id}" in script
    assert "no process of the run left" in \
        (run.paths.logs / "slurm" / f"batch-{job_id}.out").read_text()
    _assert_nothing_left(run, slurm)
    listing = run_cli("runs", "--experiment", "slurm-single")
    row = next(line for line in listing.stdout.splitlines() if run.id in line)
    assert f"slurm:{job_id}" in row


def test_multiworker_across_two_nodes(workspace, slurm, tmp_path):
    target = add_slurm_target(workspace, slurm, tmp_path)
    run = Experiment("slurm-mw", workspace=workspace.root).submit(TensorFlow(
        source_directory=str(MW_EXAMPLE), entry_script="train.py",
        script_params={"--epochs": 2, "--steps-per-epoch": 5},
        distributed_backend="multiworker", node_count=2, compute_target=target))
    details = run.wait_for_completion(timeout=900)
    assert details["exit_codes"] == {"worker:0@node1": 0, "worker:1@node2": 0}
    _assert_mw_trained(run, "worker:1@node2")  # on two nodes, the same final weights
    _assert_nothing_left(run, slurm)


def test_parameter_servers_across_two_nodes(workspace, slurm, tmp_path):
    target = add_slurm_target(workspace, slurm, tmp_path)
    run = Experiment("slurm-ps", workspace=workspace.root).submit(
        _ps_job(node_count=2, compute_target=target))
    details = run.wait_for_completion(timeout=900)
    assert set(details["exit_codes"]) == {"chief:0@node1", "worker:0@node2",
                                          "worker:1@node1", "ps:0@node2"}
    _assert_ps_trained(run, details)
    _assert_nothing_left(run, slurm)


def test_horovod_across_two_nodes(workspace, slurm, tmp_path):
    """mpirun inside the allocation launches its daemons through Slurm (no ssh)."""
    target = add_slurm_target(workspace, slurm, tmp_path)
    run = Experiment("slurm-hvd", workspace=workspace.root).submit(TensorFlow(
        source_directory=str(HVD_EXAMPLE), entry_script="train.py",
        script_params={"--epochs": 2}, distributed_backend="mpi", node_count=2,
        compute_target=target))
    details = run.wait_for_completion(timeout=1200)
    log = run.paths.output_log.read_text()
    assert "[rank:1@node2] allreduce ok: rank 1 of 2" in log  # the pre-flight, in Slurm too
    sums = _checksums(log)
    assert set(sums) == {0, 1} and sums[0] == sums[1]
    assert set(re.findall(r"rank \d of size 2 on (\S+)", log)) == {"node1", "node2"}
    assert details["exit_codes"] == {"mpirun:0@node1": 0}
    _assert_nothing_left(run, slurm)


def test_cancel_scancels_and_leaves_nothing(workspace, slurm, job_dir, tmp_path):
    target = add_slurm_target(workspace, slurm, tmp_path)
    run = Experiment("slurm-cancel", workspace=workspace.root).submit(TensorFlow(
        source_directory=str(job_dir), entry_script="sleeper.py", node_count=2,
        distributed_backend="multiworker", compute_target=target))
    wait_for_line(run, "ready: sleeping")
    job_id = _job_id(run)
    assert job_id in slurm.jobs()
    run.cancel()
    details = run.wait_for_completion(timeout=300, raise_on_error=False)
    assert details["status"] == "Canceled"
    log = run.paths.output_log.read_text()
    assert f"Slurm job {job_id} ended" in log and "none of it is in the queue" in log
    _assert_nothing_left(run, slurm)  # the sleepers' children (one setsid) too


def test_time_limit(workspace, slurm, job_dir, tmp_path):
    target = add_slurm_target(workspace, slurm, tmp_path)
    run = Experiment("slurm-limit", workspace=workspace.root).submit(TensorFlow(
        source_directory=str(job_dir), entry_script="sleeper.py", compute_target=target,
        max_run_duration_seconds=8))
    details = run.wait_for_completion(timeout=300, raise_on_error=False)
    assert details["status"] == "Failed"
    assert details["reason"] == "exceeded max_run_duration_seconds=8"
    assert "#SBATCH --time=2" in (run.paths.logs / "slurm" / "attempt-1.sh").read_text()
    _assert_nothing_left(run, slurm)


def test_a_job_canceled_outside_tfsubmit_says_so_first(workspace, slurm, job_dir, tmp_path):
    """Issue 28: an admin's scancel mid-run: the reason names that root cause first, then
    the first task it broke (measured before: only the task's own exit code and error)."""
    target = add_slurm_target(workspace, slurm, tmp_path)
    run = Experiment("slurm-scancel", workspace=workspace.root).submit(TensorFlow(
        source_directory=str(job_dir), entry_script="preemptible.py",
        script_params=["60", "0.3"], node_count=2, distributed_backend="multiworker",
        compute_target=target))
    wait_for_line(run, "step 2 checkpointed")
    done = slurm._client(["scancel", _job_id(run)])
    assert done.returncode == 0, done.stderr
    details = run.wait_for_completion(timeout=300, raise_on_error=False)
    assert details["status"] == "Failed"
    assert details["reason"].startswith(
        "the job was canceled in Slurm (scancel outside tfsubmit); the first task it broke: "
        "worker:"), details["reason"]
    _assert_nothing_left(run, slurm)


def test_second_job_waits_queued_with_slurms_reason(workspace, slurm, job_dir, tmp_path):
    target = add_slurm_target(workspace, slurm, tmp_path, sbatch_args=["--exclusive"])
    experiment = Experiment("slurm-queue", workspace=workspace.root)
    first = experiment.submit(TensorFlow(
        source_directory=str(job_dir), entry_script="preemptible.py",
        script_params=["12", "0.5"], node_count=2, distributed_backend="multiworker",
        compute_target=target))
    wait_for_line(first, "step 1 checkpointed")
    second = experiment.submit(TensorFlow(
        source_directory=str(job_dir), entry_script="echo_args.py", compute_target=target))
    _wait(lambda: "pending: Resources" in second.paths.output_log.read_text(), 120,
          "the second job never showed Slurm's reason")
    assert second.get_status() == "Queued"
    assert second._record()["queue_reason"].endswith("pending: Resources")
    shown = run_cli("show", second.id)
    assert "pending: Resources" in shown.stdout, shown.stdout
    assert first.get_status() == "Running"
    first.wait_for_completion(timeout=300)
    details = second.wait_for_completion(timeout=300)
    assert details["status"] == "Completed"
    assert details["startTimeUtc"] >= first.get_details()["endTimeUtc"][:19]
    _assert_nothing_left(second, slurm)


def test_requeue_resumes_from_the_checkpoint(workspace, slurm, job_dir, tmp_path):
    target = add_slurm_target(workspace, slurm, tmp_path)
    run = Experiment("slurm-requeue", workspace=workspace.root).submit(TensorFlow(
        source_directory=str(job_dir), entry_script="preemptible.py",
        script_params=["20", "0.3"], compute_target=target, max_restarts=1))
    wait_for_line(run, "step 3 checkpointed")
    job_id = _job_id(run)
    slurm.scontrol("requeue", job_id)
    details = run.wait_for_completion(timeout=600)
    log = run.paths.output_log.read_text()
    assert [r["reason"].split(" (exit")[0].split(" (signal")[0]
            for r in details["restarts"]] == \
        ["the Slurm job was requeued (restart 1); the first task it broke: worker:0@node1"]
    resumed = run.get_metrics()["resumed_step"]
    assert resumed >= 3, log
    assert f"[worker:0@node1] resumed from checkpoint step {resumed}" in log
    assert run.get_metrics()["step"][-1] == 20
    assert "restart 1 of 1" in log
    _assert_nothing_left(run, slurm)


def test_login_node_over_ssh(workspace, slurm, hosts, job_dir, tmp_path):
    """sbatch, squeue and scancel run on a login node reached over SSH (a real sshd)."""
    login = {"address": hosts.addresses[0], "user": "root", "port": hosts.port,
             "key_file": str(hosts.user_key), "known_hosts": str(hosts.known_hosts)}
    target = add_slurm_target(workspace, slurm, tmp_path, login=login)
    run = Experiment("slurm-login", workspace=workspace.root).submit(TensorFlow(
        source_directory=str(job_dir), entry_script="echo_args.py", compute_target=target))
    details = run.wait_for_completion(timeout=600)
    assert details["exit_codes"] == {"worker:0@node1": 0}
    _assert_nothing_left(run, slurm)
    # A wrong key is named, with the login node.
    bad = add_slurm_target(workspace, slurm, tmp_path,
                           login={**login, "key_file": str(tmp_path / "nokey")})
    failed = Experiment("slurm-login", workspace=workspace.root).submit(TensorFlow(
        source_directory=str(job_dir), entry_script="echo_args.py", compute_target=bad))
    details = failed.wait_for_completion(timeout=300, raise_on_error=False)
    assert details["status"] == "Failed"
    assert f"root@{hosts.addresses[0]}:{hosts.port}: key_file" in details["reason"]


def test_bad_slurm_target_is_named(workspace, tmp_path):
    path = workspace.targets_file
    before = path.read_text() if path.exists() else None
    try:
        data = yaml.safe_load(before) if before else {}
        data["bad-slurm"] = {"type": "slurm", "workdir": "relative/path"}
        path.write_text(yaml.safe_dump(data))
        (tmp_path / "x.py").write_text("print('never')\n")
        job = tmp_path / "job.yaml"
        job.write_text(yaml.safe_dump({"source_directory": str(tmp_path),
                                       "entry_script": "x.py", "compute_target": "bad-slurm"}))
        result = run_cli("submit", str(job))
        assert result.returncode == 2
        assert "target 'bad-slurm': workdir: Value error, 'relative/path' is not an " \
               "absolute path" in result.stderr
    finally:
        if before is None:
            path.unlink()
        else:
            path.write_text(before)


def test_node_lost_mid_run_fails_naming_it(workspace, slurm, job_dir, tmp_path):
    """Slurm takes node2 away (set DOWN, as when its slurmd stops answering): the run
    fails naming node2, and nothing of it is left."""
    target = add_slurm_target(workspace, slurm, tmp_path)
    run = Experiment("slurm-node-lost", workspace=workspace.root).submit(TensorFlow(
        source_directory=str(job_dir), entry_script="sleeper.py", node_count=2,
        distributed_backend="multiworker", compute_target=target))
    wait_for_line(run, "[worker:1@node2] ready: sleeping")
    slurm.scontrol("update", "nodename=node2", "state=down", "reason=lost-in-test")
    try:
        details = run.wait_for_completion(timeout=300, raise_on_error=False)
    finally:
        slurm.resume("node2")
    assert details["status"] == "Failed"
    assert "node failure on node2" in details["reason"], \
        details["reason"]
    _assert_nothing_left(run, slurm)


def test_sweep_trials_are_slurm_jobs_two_at_a_time(workspace, slurm, job_dir, tmp_path):
    from test_e2e_sweep import overlap

    from tfsubmit.tuning import Sweep, choice

    target = add_slurm_target(workspace, slurm, tmp_path)
    sweep = Sweep(TensorFlow(source_directory=str(job_dir), entry_script="scored.py",
                             compute_target=target),
                  space={"--loss": choice(0.4, 0.3, 0.2, 0.1)}, sampling="grid",
                  primary_metric="loss", goal="minimize", max_total_runs=4,
                  max_concurrent_runs=2)
    run = Experiment("slurm-sweep", workspace=workspace.root).submit(sweep)
    details = run.wait_for_completion(timeout=900)
    assert details["status"] == "Completed"
    trials = run.get_trials()
    assert len(trials) == 4 and all(t["status"] == "Completed" for t in trials)
    assert overlap(trials) <= 2
    jobs = {run_of(workspace, t["run_id"])._record()["slurm_job_id"]
            for t in trials}
    assert len(jobs) == 4  # each trial its own Slurm job
    assert run.get_best_run().script_params["--loss"] == 0.1
    assert not jobs & set(slurm.jobs())


def run_of(workspace, run_id: str):
    from tfsubmit.api import Run

    return Run(run_id, workspace=workspace.root)
