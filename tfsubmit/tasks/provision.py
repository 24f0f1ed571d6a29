from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from tfsubmit.process import Node
from tfsubmit.snapshot import ObjectStore, Snapshot, materialize
from tfsubmit.spec import TrainingJob
from tfsubmit.submission import Submission
from tfsubmit.targets import get_target
from tfsubmit.tasks._logging import forwarded


@task(name="provision_nodes", cache_policy=NO_CACHE)
def provision_nodes(job: TrainingJob, sub: Submission, snapshot: Snapshot) -> list[Node]:
    """Prepare the target's nodes: a working directory holding the snapshot, outputs/, logs/.

    Args:
        job: the validated job spec.
        sub: the submission.
        snapshot: the source snapshot to stage on every node.

    Returns:
        The nodes, ready to run processes.
    """
    sub.check_canceled()
    target = get_target(job.compute_target)
    with forwarded(sub.log) as log:
        node = target.provision(sub.paths.root)
        materialize(snapshot, ObjectStore(sub.workspace.objects), Path(node.workdir))
        log.event(f"provisioned {node.host}: working directory {node.workdir}")
    return [node]
