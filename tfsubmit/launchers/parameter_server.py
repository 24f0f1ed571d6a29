"""distributed_backend="ps": workers and parameter servers, and with chief=True a chief.

Without a chief (the default, Azure ML v1's TF_CONFIG: `ps` and `worker` only), worker 0
is the chief and the job is done when every worker exits 0. With chief=True (TF2's
ParameterServerStrategy + ClusterCoordinator) the chief coordinates and decides."""

from __future__ import annotations

from tfsubmit.launchers.base import Launcher, Plan
from tfsubmit.launchers.tf_config import place, tf_config_specs
from tfsubmit.spec.job import TrainingJob
from tfsubmit.spec.process import DEFAULT_LAUNCH, LaunchOptions, Node, ProcessSpec


def plan_parameter_server(
    job: TrainingJob, nodes: list[Node], *, run_id: str, chief: bool = True,
    options: LaunchOptions = DEFAULT_LAUNCH,
) -> list[ProcessSpec]:
    """A chief (the coordinator, unless chief=False), worker_count workers and
    parameter_server_count parameter servers."""
    roles = [("chief", 0)] if chief else []
    roles += [("worker", i) for i in range(job.worker_count)]
    roles += [("ps", i) for i in range(job.parameter_server_count)]
    tasks = place(roles, nodes, run_id=run_id, task_host=options.task_host)
    return tf_config_specs(job, tasks, run_id=run_id)


def _is_chief(spec: ProcessSpec) -> bool:
    return spec.role == "chief"


def _is_worker(spec: ProcessSpec) -> bool:
    return spec.role == "worker"


class ParameterServer(Launcher):
    def plan(self, job: TrainingJob, nodes: list[Node], *, run_id: str,
             options: LaunchOptions) -> Plan:
        specs = plan_parameter_server(job, nodes[: job.node_count], run_id=run_id,
                                      chief=job.chief, options=options)
        # Done when the chief (the coordinator) is, or with no chief when all workers are;
        # the parameter servers (and workers) are then stopped. TensorFlow's coordinator
        # re-uses a worker restarted at its address, so a failed worker restarts alone.
        return Plan(tuple(specs), decides=_is_chief if job.chief else _is_worker,
                    restart_alone=_is_worker)
