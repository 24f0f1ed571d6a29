"""Horovod over Open MPI (distributed_backend="mpi"): real training, local and over SSH."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest
from conftest import ROOT, wait_for_line
from sshhosts import NamespaceHosts
from test_ssh import _netns_available

from tfsubmit import Experiment, TensorFlow
from tfsubmit.system.processes import processes_of_run

pytestmark = pytest.mark.e2e
EXAMPLE = ROOT / "examples" / "horovod-synthetic"


def _job(**changes) -> TensorFlow:
    return TensorFlow(**{"source_directory": str(EXAMPLE), "entry_script": "train.py",
                         "script_params": {"--epochs": 2}, "distributed_backend": "mpi",
                         **changes})


def _checksums(log: str) -> dict[int, str]:
    return {int(m[1]): m[2] for m in re.finditer(r"rank (\d) weights checksum (\S+)", log)}


def test_two_ranks_on_one_node(workspace):
    run = Experiment("hvd-local", workspace=workspace.root).submit(
        _job(process_count_per_node=2))
    details = run.wait_for_completion(timeout=900)
    log = run.paths.output_log.read_text()
    assert "[rank:0@local] allreduce ok: rank 0 of 2" in log  # the mpi4py pre-flight
    assert "[rank:0@local] rank 0 of size 2" in log and "[rank:1@local] rank 1 of size 2" in log
    sums = _checksums(log)
    assert set(sums) == {0, 1} and sums[0] == sums[1]  # Horovod averaged the gradients
    assert run.get_metrics()["epoch"] == [1.0, 2.0]
    assert (run.paths.outputs / "model.keras").is_file()
    assert details["exit_codes"] == {"mpirun:0@local": 0}
    assert processes_of_run(run.id) == []


def test_two_ranks_inside_one_container(workspace, docker_engine):
    """mpi on the docker target: mpirun and both ranks in one container. Runs after
    test_two_ranks_on_one_node, which built (or found) the Horovod wheel the image needs."""
    run = Experiment("hvd-docker", workspace=workspace.root).submit(
        _job(process_count_per_node=2, compute_target="docker-test"))
    details = run.wait_for_completion(timeout=1200)
    log = run.paths.output_log.read_text()
    assert "[rank:1@docker-test] allreduce ok: rank 1 of 2" in log
    sums = _checksums(log)
    assert set(sums) == {0, 1} and sums[0] == sums[1]
    # Both ranks ran in the same container (its hostname, Open MPI-safe: no "_").
    hosts = set(re.findall(r"rank \d of size 2 on (\S+)", log))
    assert len(hosts) == 1 and hosts.pop().endswith("-mpirun-0")
    assert details["exit_codes"] == {"mpirun:0@docker-test": 0}
    assert docker_engine.containers.list(all=True, filters={"label": f"tfsubmit.run={run.id}"}) \
        == []


def test_one_rank_on_each_of_two_ssh_hosts(workspace, hosts):
    from test_ssh import add_target

    job = _job(node_count=2, process_count_per_node=1,
               compute_target=add_target(workspace, hosts))
    run = Experiment("hvd-ssh", workspace=workspace.root).submit(job)
    run.wait_for_completion(timeout=900)
    log = run.paths.output_log.read_text()
    # Each rank says where sshd started it: the first on 127.0.0.2, the second on 127.0.0.3.
    assert "[rank:0@127.0.0.2] rank 0 of size 2 on" in log and "via 127.0.0.2" in log
    assert "[rank:1@127.0.0.3] rank 1 of size 2 on" in log and "via 127.0.0.3" in log
    sums = _checksums(log)
    assert set(sums) == {0, 1} and sums[0] == sums[1]
    assert (run.paths.outputs / "model.keras").is_file()


def _rank_pid(run_id: str, rank: int) -> int:
    for pid in processes_of_run(run_id):
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"OMPI_COMM_WORLD_RANK={rank}".encode() in environ:
            return pid
    raise AssertionError(f"no rank {rank} in run {run_id}")


def test_a_dead_rank_stops_the_job_and_is_named(workspace):
    run = Experiment("hvd-kill", workspace=workspace.root).submit(
        _job(process_count_per_node=2, script_params={"--epochs": 500}))
    wait_for_line(run, "[rank:0@local] Epoch 2/500")
    os.kill(_rank_pid(run.id, 1), signal.SIGKILL)
    killed_at = time.monotonic()
    details = run.wait_for_completion(timeout=120, raise_on_error=False)
    assert time.monotonic() - killed_at < 30
    assert details["status"] == "Failed"
    assert details["reason"].startswith("rank 1@local failed")
    assert (run.paths.logs / "mpirun-0.log").is_file()
    assert processes_of_run(run.id) == []


def test_more_ranks_than_gpus_is_refused_naming_the_host(workspace, hosts):
    from test_ssh import add_target

    job = _job(node_count=2, process_count_per_node=1, use_gpu=True,
               compute_target=add_target(workspace, hosts))
    run = Experiment("hvd-gpus", workspace=workspace.root).submit(job)
    details = run.wait_for_completion(timeout=300, raise_on_error=False)
    assert details["status"] == "Failed"
    assert details["reason"].startswith("process_count_per_node: 1 ranks on host 127.0.0.2, "
                                       "which has 0 GPU(s)")


@pytest.mark.skipif(not _netns_available(), reason="network namespaces need CAP_NET_ADMIN")
def test_preflight_names_the_host_mpi_cannot_reach(workspace, job_dir, tmp_path):
    from test_ssh import add_target

    hosts = NamespaceHosts(tmp_path / "nshosts", 2).start()
    run = None
    try:
        target = add_target(workspace, hosts, connect_timeout=3)
        run = Experiment("hvd-preflight", workspace=workspace.root).submit(
            _job(node_count=2, process_count_per_node=1, compute_target=target))
        wait_for_line(run, "[tfsubmit] provisioned 2 host(s)")
        hosts.cut(1)  # tfsubmit got in; mpirun's own ssh to the second host will not
        details = run.wait_for_completion(timeout=300, raise_on_error=False)
        assert details["status"] == "Failed"
        assert details["reason"].startswith(
            f"MPI pre-flight failed: {hosts.addresses[1]} cannot join an allreduce with "
            f"{hosts.addresses[0]}")
        assert "rank 0 of size" not in run.paths.output_log.read_text()  # no training began
    finally:
        if run is not None:
            for pid in processes_of_run(run.id):
                os.kill(pid, signal.SIGKILL)
        hosts.stop()
