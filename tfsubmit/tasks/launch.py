from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import TerminationSignal
from prefect.states import Cancelled, Failed, State

from tfsubmit.pipeline import launch
from tfsubmit.pipeline.context import Submission
from tfsubmit.pipeline.execute import CANCELED_FROM_PREFECT
from tfsubmit.pipeline.supervise import Outcome
from tfsubmit.spec.environment import Environment
from tfsubmit.spec.process import Node
from tfsubmit.targets.base import Target
from tfsubmit.tasks._kept import kept
from tfsubmit.tasks._logging import forwarded
from tfsubmit.tasks.progress import RunArtifacts


@task(name="launch_topology", cache_policy=NO_CACHE)
@kept("launch_topology")
def launch_topology(sub: Submission, target: Target, nodes: list[Node], env: Environment,
                    artifacts: RunArtifacts) -> Outcome | State:
    """Plan the job's processes, run them on the nodes, and stream every line.

    Args:
        sub: the submission; its cancel flag stops the processes.
        target: the compute target the nodes belong to.
        nodes: the provisioned nodes.
        env: the job's environment.
        artifacts: the run's live artifacts, updated as the job logs metrics.

    Returns:
        The outcome, with each process's exit code: as is when the job completed, as the
        data of the task's Failed or Cancelled state when it did not.
    """
    with forwarded(sub.log) as log:
        try:
            outcome = launch.launch_topology(sub, target, nodes, env, log,
                                             on_metrics=artifacts.publish)
        except TerminationSignal:  # a cancel from Prefect: the job was stopped in order
            log.event("the flow run's process was told to stop (SIGTERM); the job is stopped")
            outcome = Outcome("Canceled", CANCELED_FROM_PREFECT)
    if outcome.status == "Failed":
        return Failed(message=outcome.reason or "the job failed", data=outcome)
    if outcome.status == "Canceled":
        return Cancelled(message=outcome.reason or "canceled", data=outcome)
    return outcome
