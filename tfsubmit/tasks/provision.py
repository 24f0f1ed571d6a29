from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tfsubmit.pipeline import provision
from tfsubmit.pipeline.context import Submission
from tfsubmit.spec.environment import Environment
from tfsubmit.spec.process import Node
from tfsubmit.store.snapshots import Snapshot
from tfsubmit.targets.base import Target
from tfsubmit.tasks._kept import kept
from tfsubmit.tasks._logging import forwarded


@task(name="provision_nodes", cache_policy=NO_CACHE)
@kept("provision_nodes")
def provision_nodes(sub: Submission, target: Target, snapshot: Snapshot,
                    env: Environment) -> list[Node]:
    """Prepare the target's nodes: connected, pre-flight checked, snapshot staged.

    Args:
        sub: the submission.
        target: the compute target to provision.
        snapshot: the source snapshot to stage on every node.
        env: the environment from resolve_environment.

    Returns:
        The nodes, each with its working directory, interpreter and runtime path.
    """
    with forwarded(sub.log) as log:
        return provision.provision_nodes(sub, target, snapshot, env, log)
