"""distributed_backend="multiworker": MultiWorkerMirroredStrategy workers, no servers."""

from __future__ import annotations

from tfsubmit.launchers.base import Launcher, Plan
from tfsubmit.launchers.tf_config import place, tf_config_specs
from tfsubmit.spec.job import TrainingJob
from tfsubmit.spec.process import DEFAULT_LAUNCH, LaunchOptions, Node, ProcessSpec


def plan_multiworker(job: TrainingJob, nodes: list[Node], *, run_id: str,
                     options: LaunchOptions = DEFAULT_LAUNCH) -> list[ProcessSpec]:
    """node_count x process_count_per_node workers (worker 0 acts as chief), placed so
    each node gets process_count_per_node of them."""
    roles = [("worker", i) for i in range(job.node_count * job.process_count_per_node)]
    tasks = place(roles, nodes[: job.node_count], run_id=run_id, task_host=options.task_host)
    return tf_config_specs(job, tasks, run_id=run_id)


class MultiWorker(Launcher):
    def plan(self, job: TrainingJob, nodes: list[Node], *, run_id: str,
             options: LaunchOptions) -> Plan:
        return Plan(tuple(plan_multiworker(job, nodes, run_id=run_id, options=options)))
