"""The typed context one submission's steps share, built complete in one place."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from tfsubmit.errors import JobSpecError, TfsubmitError
from tfsubmit.spec.job import TrainingJob, load_job_file, validate_experiment_name
from tfsubmit.store import runlock
from tfsubmit.store.cancel import CancelFlag
from tfsubmit.store.layout import RunPaths, Workspace, read_json
from tfsubmit.store.objects import ObjectStore
from tfsubmit.store.record import QUEUED, TERMINAL_STATUSES, RunRecord
from tfsubmit.store.runlog import RunLog


class RunCanceled(TfsubmitError):
    """The user canceled the run before or while it ran."""


@dataclass(frozen=True)
class Submission:
    """One run being executed: its job, where it lives, its record, log and cancel flag."""

    job: TrainingJob
    run_id: str
    experiment: str
    workspace: Workspace
    paths: RunPaths
    record: RunRecord
    log: RunLog
    cancel: CancelFlag
    store: ObjectStore

    def check_canceled(self) -> None:
        if self.cancel.is_set():
            raise RunCanceled(self.cancel.reason())


# The job's secret values, held in this process's memory only (see hold_secrets).
_SECRETS: dict[str, str] = {}


def hold_secrets(values: dict[str, str]) -> None:
    """Keep the secret values the runner was handed, for the jobs this process runs."""
    _SECRETS.update(values)


def open_submission(job: dict[str, Any] | str | None, experiment: str | None,
                    run_id: str | None, workspace: str | None, *, attempt: int = 1
                    ) -> Submission | None:
    """The submission this process runs, holding its run's lock: the run folder `run_id`
    (made by Experiment.submit or a sweep), or a new one for `job` (a deployment's flow run
    started with a job). A run that ended before this process took it is a new attempt when
    `attempt` > 1 (Prefect retried the flow run: the earlier attempt is kept under
    attempts/), else None (it was canceled while queued). Bad input raises before anything
    exists."""
    ws = Workspace(workspace)
    if run_id is not None and ws.paths_of(run_id).record.exists():
        record = take_run(ws, run_id, attempt)
        if record is None:
            return None
        spec_source: dict[str, Any] | str = read_json(record.paths.job)
        experiment = record.read().get("experiment")
    elif job is None:
        raise JobSpecError("job: give a job spec or the path of a job YAML file (or the "
                           "run_id of a run folder that holds one)")
    else:
        spec_source, record = job, None
    if isinstance(spec_source, str):
        spec, file_experiment = load_job_file(spec_source)
        experiment = experiment or file_experiment
    else:
        spec = TrainingJob.from_dict(spec_source)
    if spec.missing_secrets:
        spec = spec.with_secrets(_SECRETS)
        if spec.missing_secrets:
            if record is not None:
                record.release_lock()
            raise JobSpecError(
                f"secret_environment_variables: the values of {', '.join(spec.missing_secrets)} "
                "did not reach this process (secrets travel from Experiment.submit or "
                "`tfsubmit submit` to the workspace's fork server, in memory only, and are "
                "lost when it restarts before the run starts); submit the job again")
    experiment = validate_experiment_name(experiment or "default")
    if record is None:  # a deployment's flow run: this process makes the run and holds it
        record = RunRecord.create(ws, run_id or ws.new_run_id(experiment), experiment,
                                  spec.to_dict())
        _claim(record)
    paths = record.paths
    return Submission(job=spec, run_id=paths.root.name, experiment=experiment, workspace=ws,
                      paths=paths, record=record, log=RunLog(paths.output_log),
                      cancel=CancelFlag(paths), store=ObjectStore(ws.objects))


# How long a flow run waits for its submitter to let go of a Queued run's lock.
HAND_OVER_SECONDS = 30.0


def take_run(ws: Workspace, run_id: str, attempt: int) -> RunRecord | None:
    """Take run `run_id`'s lock and claim it (Queued -> Preparing); None when it ended and
    this is no retry. A sweep's trial is already held by this very process."""
    paths = ws.run_paths(run_id)
    lock_fd = runlock.acquire(paths.runner_lock)
    deadline = time.monotonic() + HAND_OVER_SECONDS
    while lock_fd is None and time.monotonic() < deadline \
            and not runlock.held_here(paths.runner_lock) \
            and RunRecord(paths).read().get("status") == QUEUED:
        time.sleep(0.05)  # its submitter has made the flow run and is about to let go
        lock_fd = runlock.acquire(paths.runner_lock)
    if lock_fd is None and not runlock.held_here(paths.runner_lock):
        lock_fd = runlock.acquire(paths.runner_lock)  # a reader that ended it has let go
    if lock_fd is None:
        if runlock.held_here(paths.runner_lock):
            record = RunRecord(paths)
            _claim(record)
            return record
        raise TfsubmitError(f"run {run_id} is being run by another process (its runner "
                            "lock is held); this flow run leaves it alone")
    record = RunRecord(paths, lock_fd)
    status = record.read().get("status")
    if status != QUEUED:
        if attempt <= 1 and status in TERMINAL_STATUSES:
            record.release_lock()
            return None
        record.new_attempt()  # Prefect retried it, or its last process died mid-run
    if not _claim(record):
        record.release_lock()
        return None
    return record


def _claim(record: RunRecord) -> bool:
    """This process runs the Queued run (Preparing), and says so in its runner.pid."""
    if not record.claim(os.getpid()):
        return False
    record.paths.runner_pid.write_text(str(os.getpid()))
    return True
