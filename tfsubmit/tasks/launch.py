from __future__ import annotations

import time

from prefect import task
from prefect.cache_policies import NO_CACHE

from tfsubmit.environment import Environment
from tfsubmit.errors import NotSupportedError
from tfsubmit.launchers import plan_multiworker, plan_parameter_server, plan_single_node
from tfsubmit.process import Node
from tfsubmit.spec import TrainingJob
from tfsubmit.submission import Submission
from tfsubmit.supervisor import Outcome, RestartPolicy, supervise
from tfsubmit.tasks._logging import forwarded


def plan(job: TrainingJob, nodes: list[Node], *, run_id: str):
    """The job's process specs, and which of them decide when the job is done."""
    backend = job.distributed_backend
    if backend is None:
        return plan_single_node(job, nodes[0], run_id=run_id), _everyone
    if backend == "ps":
        # Done when the chief (the coordinator) is, or with no chief when all workers are;
        # the parameter servers (and workers) are then stopped.
        specs = plan_parameter_server(job, nodes[: job.node_count], run_id=run_id,
                                      chief=job.chief)
        return specs, _is_chief if job.chief else _is_worker
    if backend == "multiworker":
        return plan_multiworker(job, nodes, run_id=run_id), _everyone
    raise NotSupportedError(f"distributed_backend={backend!r} is not supported yet")


def _everyone(spec) -> bool:
    return True


def _is_chief(spec) -> bool:
    return spec.role == "chief"


def _is_worker(spec) -> bool:
    return spec.role == "worker"


def _nobody(spec) -> bool:
    return False


@task(name="launch_topology", cache_policy=NO_CACHE)
def launch_topology(
    job: TrainingJob, sub: Submission, nodes: list[Node], env: Environment
) -> Outcome:
    """Plan the job's processes, run them on the nodes, and stream every line.

    Args:
        job: the validated job spec.
        sub: the submission; its cancel flag stops the processes.
        nodes: the provisioned nodes.
        env: the job's environment.

    Returns:
        The outcome: Completed, Failed or Canceled, with each process's exit code.
    """
    sub.check_canceled()
    specs, decides = plan(job, nodes, run_id=sub.run_id)
    with forwarded(sub.log) as log:
        placed = ", ".join(f"{s.role}:{s.index}@{s.host}" for s in specs)
        log.event(f"starting {len(specs)} process(es) ({placed}): {' '.join(specs[0].argv[1:])}")
        outcome = supervise(
            sub.target,
            specs,
            run_id=sub.run_id,
            log=log,
            log_dir=sub.paths.logs,
            cancel=sub.cancel,
            max_seconds=job.max_run_duration_seconds,
            on_started=lambda handles: sub.record(
                status="Running", started=time.time(), pids=[h.pid for h in handles]
            ),
            decides=decides,
            policy=RestartPolicy(
                max_restarts=job.max_restarts,
                permanent_exit_codes=frozenset(job.permanent_exit_codes),
                # ps: TensorFlow's coordinator re-uses a worker restarted at its address.
                alone=_is_worker if job.distributed_backend == "ps" else _nobody,
            ),
            hang_seconds=job.hang_timeout_seconds,
            activity=lambda: sub.target.last_activity(nodes),
        )
        log.event(f"processes ended: {outcome.describe()}")
        if outcome.restarts:
            sub.record(restarts=outcome.restarts)
    return outcome
