"""The single-node launcher is pure: exact specs from a job and a node."""

from __future__ import annotations

from pathlib import Path

import pytest

from tfsubmit import TensorFlow
from tfsubmit.launchers import plan_single_node
from tfsubmit.process import Node

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
