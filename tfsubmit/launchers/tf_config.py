"""TF_CONFIG fan-out for TensorFlow's own cluster topologies (pure functions).

The `parameter_server` (distributed_backend="ps") and `multiworker` launchers build on
this: one ProcessSpec per task. Every task runs the
user's entry_script with its own TF_CONFIG, built from typed data and serialised once:

    {"cluster": {"chief": [...], "worker": [...], "ps": [...]},
     "task": {"type": "worker", "index": 1}}

Tasks are spread over the nodes round-robin; ports are counted up from a base derived
from the run id, so no two tasks of a job share a port and concurrent jobs rarely meet.
Cluster addresses are the nodes' network addresses, never `localhost` across hosts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass

from tfsubmit.launchers.base import job_env
from tfsubmit.spec.job import TF_PORTS_PER_JOB, TrainingJob
from tfsubmit.spec.process import Node, ProcessSpec

PORT_RANGE = (20000, 29999)
PORTS_PER_JOB = TF_PORTS_PER_JOB  # the spec refuses jobs with more tasks


@dataclass(frozen=True)
class Task:
    type: str
    index: int
    node: Node
    port: int
    host_name: str = ""  # where the task is reached, when not at its node's address

    @property
    def address(self) -> str:
        return f"{self.host_name or self.node.address or self.node.host}:{self.port}"


def base_port(run_id: str) -> int:
    low, high = PORT_RANGE
    slots = (high - low + 1) // PORTS_PER_JOB
    return low + int(hashlib.sha256(run_id.encode()).hexdigest(), 16) % slots * PORTS_PER_JOB


def place(roles: list[tuple[str, int]], nodes: list[Node], *, run_id: str,
          task_host: Callable[[str, int], str] | None = None) -> list[Task]:
    """Assign (type, index) tasks to nodes round-robin, each with its own port.

    Ports are unique across the whole job, not only per host: TensorFlow servers bind
    0.0.0.0, so two "hosts" that are one machine (test hosts, several addresses of one
    box) must not share a port either. With `task_host`, each task is reached at its own
    host name (one container per task) instead of its node's address.
    """
    if not nodes:
        raise ValueError("no nodes to place tasks on")
    first = base_port(run_id)
    return [Task(kind, index, nodes[n % len(nodes)], first + n,
                 task_host(kind, index) if task_host else "")
            for n, (kind, index) in enumerate(roles)]


def cluster_of(tasks: list[Task]) -> dict[str, list[str]]:
    cluster: dict[str, list[str]] = {}
    for task in tasks:
        cluster.setdefault(task.type, []).append(task.address)
    return cluster


def tf_config_specs(job: TrainingJob, tasks: list[Task], *, run_id: str) -> list[ProcessSpec]:
    """One spec per task, each with the same cluster and its own task in TF_CONFIG."""
    cluster = cluster_of(tasks)
    specs = []
    for task in tasks:
        tf_config = json.dumps({"cluster": cluster, "task": {"type": task.type,
                                                             "index": task.index}},
                               sort_keys=True)
        env = job_env(job, run_id=run_id, node=task.node, role=task.type, index=task.index)
        env["PYTHONPATH"] = task.node.runtime
        env["TF_CONFIG"] = tf_config
        specs.append(ProcessSpec(
            host=task.node.host,
            argv=(task.node.python, job.entry_script, *job.script_arguments()),
            env=env,
            cwd=task.node.workdir,
            role=task.type,
            index=task.index,
        ))
    return specs
