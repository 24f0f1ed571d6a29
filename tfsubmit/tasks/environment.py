from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tfsubmit.pipeline import environment
from tfsubmit.pipeline.context import Submission
from tfsubmit.spec.environment import Environment
from tfsubmit.targets.base import Target
from tfsubmit.tasks._kept import kept
from tfsubmit.tasks._logging import forwarded


@task(name="resolve_environment", cache_policy=NO_CACHE)
@kept("resolve_environment")
def resolve_environment(sub: Submission, target: Target) -> Environment:
    """Find or build the job's Python environment (TensorFlow plus pip_packages).

    Args:
        sub: the submission; `pip freeze` of the environment is kept with its run.
        target: the compute target (an image on docker targets; each SSH host builds its
            own while provisioning, so only the hash is known then).

    Returns:
        The environment: its hash, interpreter, and whether it was reused.
    """
    with forwarded(sub.log) as log:
        return environment.resolve_environment(sub, target, log)
