"""The single-node launcher is pure: exact specs from a job and a node."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tfsubmit import TensorFlow
from tfsubmit.launchers import plan_multiworker, plan_parameter_server, plan_single_node
from tfsubmit.launchers.horovod import plan_horovod, shared_network
from tfsubmit.launchers.tf_config import base_port
from tfsubmit.spec.process import LaunchOptions, Node, RemoteShell

JOBS = Path(__file__).parent / "jobs"


def test_single_node_spec_is_exact():
    job = TensorFlow(source_directory=str(JOBS), entry_script="echo_args.py",
                     script_params={"--epochs": 3, "--name": "a b; c"},
                     environment_variables={"MY_SETTING": "on"})
    node = Node(host="local", workdir="/runs/r1/work", python="/envs/e1/bin/python",
                runtime="/ws/runtime/abc")
    [spec] = plan_single_node(job, node, run_id="r1")
    assert spec.argv == ("/envs/e1/bin/python", "echo_args.py", "--epochs", "3", "--name", "a b; c")
    assert spec.cwd == "/runs/r1/work"
    assert (spec.role, spec.index, spec.host) == ("worker", 0, "local")
    assert dict(spec.env) == {
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": "/ws/runtime/abc",
        "TFSUBMIT_RUN_ID": "r1",
        "TFSUBMIT_ROLE": "worker",
        "TFSUBMIT_INDEX": "0",
        "TFSUBMIT_METRICS_FILE": "/runs/r1/work/.tfsubmit/metrics-worker-0.jsonl",
        "TFSUBMIT_OUTPUTS": "/runs/r1/work/outputs",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "MY_SETTING": "on",
    }
    assert spec.tag == "[worker:0@local]"


def test_specs_are_immutable_and_ignore_the_parent_environment(monkeypatch):
    job = TensorFlow(source_directory=str(JOBS), entry_script="echo_args.py")
    node = Node(host="local", workdir="/w", python="p", runtime="rt")
    first = plan_single_node(job, node, run_id="r")
    monkeypatch.setenv("TFSUBMIT_RUN_ID", "leaked")
    monkeypatch.setenv("MY_SETTING", "leaked")
    assert plan_single_node(job, node, run_id="r") == first
    with pytest.raises(TypeError):
        first[0].env["X"] = "y"


# -- TF_CONFIG topologies ------------------------------------------------------------------


def _nodes(count: int) -> list[Node]:
    return [Node(host=f"10.0.0.{11 + i}", workdir=f"/wd/r/10.0.0.{11 + i}", python="/e/python",
                 runtime="/wd/rt") for i in range(count)]


def _tf_configs(specs):
    return [json.loads(spec.env["TF_CONFIG"]) for spec in specs]


def test_parameter_server_specs_are_exact():
    job = TensorFlow(source_directory=str(JOBS), entry_script="echo_args.py", node_count=2,
                     distributed_backend="ps", worker_count=2, parameter_server_count=1,
                     chief=True)
    specs = plan_parameter_server(job, _nodes(2), run_id="r1", chief=True)
    port = base_port("r1")
    assert [(s.role, s.index, s.host) for s in specs] == [
        ("chief", 0, "10.0.0.11"), ("worker", 0, "10.0.0.12"),
        ("worker", 1, "10.0.0.11"), ("ps", 0, "10.0.0.12"),
    ]
    cluster = {"chief": [f"10.0.0.11:{port}"],
               "worker": [f"10.0.0.12:{port + 1}", f"10.0.0.11:{port + 2}"],
               "ps": [f"10.0.0.12:{port + 3}"]}
    for spec, config in zip(specs, _tf_configs(specs), strict=True):
        assert config == {"cluster": cluster, "task": {"type": spec.role, "index": spec.index}}
        assert spec.argv == ("/e/python", "echo_args.py")
        assert spec.cwd == f"/wd/r/{spec.host}"
        assert spec.env["TFSUBMIT_ROLE"] == spec.role


def test_parameter_server_without_chief():
    job = TensorFlow(source_directory=str(JOBS), entry_script="echo_args.py",
                     distributed_backend="ps", worker_count=1, parameter_server_count=1)
    specs = plan_parameter_server(job, _nodes(1), run_id="r", chief=False)
    assert [(s.role, s.index) for s in specs] == [("worker", 0), ("ps", 0)]


def test_local_node_uses_its_loopback_address():
    job = TensorFlow(source_directory=str(JOBS), entry_script="echo_args.py",
                     distributed_backend="multiworker", process_count_per_node=2)
    local = Node(host="local", workdir="/w", python="p", runtime="rt", address="127.0.0.1")
    [first, second] = plan_multiworker(job, [local], run_id="r")
    port = base_port("r")
    assert _tf_configs([first])[0]["cluster"] == {
        "worker": [f"127.0.0.1:{port}", f"127.0.0.1:{port + 1}"]}
    assert (first.host, second.host) == ("local", "local")


@settings(max_examples=60, deadline=None)
@given(nodes=st.integers(1, 5), workers=st.integers(1, 8), ps=st.integers(1, 4),
       chief=st.booleans(), run_id=st.text(min_size=1, max_size=12))
def test_parameter_server_invariants(nodes, workers, ps, chief, run_id):
    job = TensorFlow(source_directory=str(JOBS), entry_script="echo_args.py",
                     node_count=nodes, distributed_backend="ps", worker_count=workers,
                     parameter_server_count=ps)
    specs = plan_parameter_server(job, _nodes(nodes), run_id=run_id, chief=chief)
    configs = _tf_configs(specs)
    cluster = configs[0]["cluster"]
    assert all(c["cluster"] == cluster for c in configs)  # every task sees the same cluster
    for kind, count in (("chief", int(chief)), ("worker", workers), ("ps", ps)):
        indexes = sorted(c["task"]["index"] for c in configs if c["task"]["type"] == kind)
        assert indexes == list(range(count))  # unique and dense
        assert len(cluster.get(kind, [])) == count
    addresses = [a for kind in cluster for a in cluster[kind]]
    ports = [a.rsplit(":", 1)[1] for a in addresses]
    assert len(ports) == len(set(ports))  # no port used twice, on any host
    assert not any(a.startswith(("localhost", "127.")) for a in addresses)
    loads = [sum(s.host == n.host for s in specs) for n in _nodes(nodes)]
    assert max(loads) - min(loads) <= 1  # round-robin


@settings(max_examples=40, deadline=None)
@given(nodes=st.integers(1, 4), per_node=st.integers(1, 4))
def test_multiworker_invariants(nodes, per_node):
    job = TensorFlow(source_directory=str(JOBS), entry_script="echo_args.py",
                     node_count=nodes, process_count_per_node=per_node,
                     distributed_backend="multiworker")
    specs = plan_multiworker(job, _nodes(nodes), run_id="r")
    configs = _tf_configs(specs)
    assert [c["task"] for c in configs] == [
        {"type": "worker", "index": i} for i in range(nodes * per_node)]
    assert list(configs[0]["cluster"]) == ["worker"]
    assert all(sum(s.host == n.host for s in specs) == per_node for n in _nodes(nodes))


# -- Horovod over mpirun --------------------------------------------------------------------

def test_horovod_mpirun_argv_is_exact_for_ssh_hosts():
    job = TensorFlow(source_directory=str(JOBS), entry_script="echo_args.py", node_count=2,
                     process_count_per_node=2, distributed_backend="mpi",
                     script_params={"--epochs": 1}, environment_variables={"A": "b c"})
    shell = RemoteShell(key_file="/k/id", port=2222, known_hosts="/k/known")
    plan = plan_horovod(job, _nodes(2), run_id="r9",
                        options=LaunchOptions(as_root=False, remote_shell=shell))
    assert plan.hostfile == "10.0.0.11 slots=2\n10.0.0.12 slots=2\n"
    dirs = "/wd/r/10.0.0.11:/wd/r/10.0.0.11:/wd/r/10.0.0.12:/wd/r/10.0.0.12"
    assert list(plan.spec.argv) == [
        "mpirun", "-np", "4", "-H", "10.0.0.11:2,10.0.0.12:2", "--bind-to", "none",
        "--map-by", "slot", "--tag-output",
        "--mca", "plm_rsh_agent", "ssh -i /k/id -p 2222 -o BatchMode=yes -o "
        "StrictHostKeyChecking=yes -o UserKnownHostsFile=/k/known -o ConnectTimeout=10",
        "--mca", "oob_tcp_if_include", "10.0.0.0/24", "--mca", "btl_tcp_if_include",
        "10.0.0.0/24",
        "-x", "TFSUBMIT_RUN_ID=r9", "-x", "TFSUBMIT_ROLE=rank", "-x", "TFSUBMIT_INDEX=0",
        "-x", "TFSUBMIT_METRICS_FILE=/wd/r/10.0.0.11/.tfsubmit/metrics-rank-0.jsonl",
        "-x", "TFSUBMIT_OUTPUTS=/wd/r/10.0.0.11/outputs", "-x", "TF_CPP_MIN_LOG_LEVEL=2",
        "-x", "A=b c",
        "-x", "PYTHONPATH=/wd/rt", "-x", f"TFSUBMIT_RANK_DIRS={dirs}",
        "/e/python", "-m", "tfsubmit.runtime.rank", "echo_args.py", "--epochs", "1",
    ]
    assert plan.spec.rank_hosts == ("10.0.0.11", "10.0.0.11", "10.0.0.12", "10.0.0.12")
    # mpirun hands this to the daemons it starts (see MPIRUN_ENV).
    assert plan.spec.env["OMPI_MCA_rtc_hwloc_vmhole"] == "none"
    assert (plan.spec.host, plan.spec.role, plan.spec.cwd) == ("10.0.0.11", "mpirun",
                                                               "/wd/r/10.0.0.11")


def test_horovod_local_root_gpu_and_legacy_keras():
    job = TensorFlow(source_directory=str(JOBS), entry_script="echo_args.py",
                     process_count_per_node=2, distributed_backend="mpi", use_gpu=True,
                     framework_version="2.17")
    local = Node(host="local", workdir="/w", python="p", runtime="rt", address="127.0.0.1")
    argv = list(plan_horovod(job, [local], run_id="r",
                             options=LaunchOptions(as_root=True)).spec.argv)
    assert argv[:5] == ["mpirun", "--allow-run-as-root", "-np", "2", "-H"]
    assert argv[5] == "localhost:2" and "plm_rsh_agent" not in argv
    assert "TFSUBMIT_RANK_GPUS=0:1" in argv and "TF_USE_LEGACY_KERAS=1" in argv
    assert "127.0.0.0/24" in argv


def test_shared_network():
    assert shared_network(["127.0.0.2", "127.0.0.3"]) == "127.0.0.0/24"
    assert shared_network(["10.1.2.3", "10.1.9.3"]) == "10.1.0.0/16"
    with pytest.raises(ValueError, match="share no /8"):
        shared_network(["10.0.0.1", "192.0.2.1"])
