from __future__ import annotations

import time

from prefect import task
from prefect.cache_policies import NO_CACHE

from tfsubmit.environment import Environment
from tfsubmit.errors import NotSupportedError
from tfsubmit.launchers import plan_single_node
from tfsubmit.process import Node
from tfsubmit.spec import TrainingJob
from tfsubmit.submission import Submission
from tfsubmit.supervisor import Outcome, supervise
from tfsubmit.tasks._logging import forwarded


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
    if job.is_distributed:
        raise NotSupportedError(
            f"distributed_backend={job.distributed_backend!r} is not supported yet"
        )
    specs = plan_single_node(job, nodes[0], run_id=sub.run_id)
    with forwarded(sub.log) as log:
        log.event(f"starting {len(specs)} process(es): {' '.join(specs[0].argv[1:])}")
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
        )
        log.event(f"processes ended: {outcome.describe()}")
    return outcome
