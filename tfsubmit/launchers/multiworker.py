"""distributed_backend="multiworker": MultiWorkerMirroredStrategy workers, no servers."""

from __future__ import annotations

from tfsubmit.launchers.tf_config import place, tf_config_specs
from tfsubmit.process import Node, ProcessSpec
from tfsubmit.spec import TrainingJob


def plan_multiworker(job: TrainingJob, nodes: list[Node], *, run_id: str) -> list[ProcessSpec]:
    """node_count x process_count_per_node workers (worker 0 acts as chief), placed so
    each node gets process_count_per_node of them."""
    roles = [("worker", i) for i in range(job.node_count * job.process_count_per_node)]
    return tf_config_specs(job, place(roles, nodes[: job.node_count], run_id=run_id), run_id=run_id)
