from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tfsubmit.pipeline import snapshot
from tfsubmit.pipeline.context import Submission
from tfsubmit.store.snapshots import Snapshot
from tfsubmit.tasks._kept import kept
from tfsubmit.tasks._logging import forwarded


@task(name="snapshot_source", cache_policy=NO_CACHE)
@kept("snapshot_source")
def snapshot_source(sub: Submission) -> Snapshot:
    """Snapshot the job's source directory into the workspace's object store.

    Args:
        sub: the submission; the snapshot's manifest is kept with its run.

    Returns:
        The snapshot: its hash, files, skipped paths and how much was new to the store.
    """
    with forwarded(sub.log) as log:
        return snapshot.snapshot_source(sub, log)
