from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tfsubmit.snapshot import ObjectStore, Snapshot, take_snapshot
from tfsubmit.spec import TrainingJob
from tfsubmit.submission import Submission
from tfsubmit.tasks._logging import forwarded
from tfsubmit.workspace import write_json


@task(name="snapshot_source", cache_policy=NO_CACHE)
def snapshot_source(job: TrainingJob, sub: Submission) -> Snapshot:
    """Snapshot the job's source directory into the workspace's object store.

    Args:
        job: the validated job spec.
        sub: the submission the snapshot belongs to; its manifest is recorded there.

    Returns:
        The snapshot: its hash, files, skipped paths and how much was new to the store.
    """
    sub.check_canceled()
    with forwarded(sub.log) as log:
        snap = take_snapshot(
            job.source_directory, ObjectStore(sub.workspace.objects), entry_script=job.entry_script
        )
        write_json(sub.paths.manifest, snap.manifest())
        log.event(
            f"snapshot {snap.hash[:12]}: {len(snap.files)} files, {snap.total_bytes} bytes "
            f"({snap.new_files} new to the store, {snap.new_bytes} bytes copied)"
        )
        for path, reason in snap.skipped.items():
            log.event(f"snapshot skipped {path}: {reason}")
        sub.record(snapshot_hash=snap.hash)
    return snap
