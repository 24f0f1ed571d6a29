"""distributed_backend="ps": a chief (coordinator), workers and parameter servers."""

from __future__ import annotations

from tfsubmit.launchers.tf_config import place, tf_config_specs
from tfsubmit.process import Node, ProcessSpec
from tfsubmit.spec import TrainingJob


def plan_parameter_server(
    job: TrainingJob, nodes: list[Node], *, run_id: str, chief: bool = True
) -> list[ProcessSpec]:
    """A chief (the coordinator, unless chief=False), worker_count workers and
    parameter_server_count parameter servers."""
    roles = [("chief", 0)] if chief else []
    roles += [("worker", i) for i in range(job.worker_count)]
    roles += [("ps", i) for i in range(job.parameter_server_count)]
    return tf_config_specs(job, place(roles, nodes, run_id=run_id), run_id=run_id)
