"""The typed context one submission's steps share, built complete in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from tfsubmit.errors import JobSpecError, TfsubmitError
from tfsubmit.spec.job import TrainingJob, load_job_file, validate_experiment_name
from tfsubmit.store.cancel import CancelFlag
from tfsubmit.store.layout import RunPaths, Workspace
from tfsubmit.store.objects import ObjectStore
from tfsubmit.store.record import RunRecord
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


def open_submission(job: dict[str, Any] | str, experiment: str | None, run_id: str | None,
                    workspace: str | None) -> Submission:
    """The submission of `job`: the run folder `run_id` (made by Experiment.submit), or a new
    one (a deployment's flow run, a sweep's trial). Bad input raises before anything exists."""
    ws = Workspace(workspace)
    if isinstance(job, str):
        spec, file_experiment = load_job_file(job)
        experiment = experiment or file_experiment
    else:
        spec = TrainingJob.from_dict(job)
    if spec.missing_secrets:
        spec = spec.with_secrets(_SECRETS)
        if spec.missing_secrets:
            raise JobSpecError(
                f"secret_environment_variables: the values of {', '.join(spec.missing_secrets)} "
                "did not reach this process (secrets travel from Experiment.submit or "
                "`tfsubmit submit` to the run's runner only); submit the job again")
    experiment = validate_experiment_name(experiment or "default")
    if run_id is None or not ws.paths_of(run_id).record.exists():
        # A deployment's flow run: this process is its runner and holds its lock for life.
        run_id = run_id or ws.new_run_id(experiment)
        record = RunRecord.create(ws, run_id, experiment, spec.to_dict())
    else:  # made by Experiment.submit or a sweep, whose runner holds the lock
        record = RunRecord(ws.run_paths(run_id))
    paths = record.paths
    if not paths.runner_pid.exists():  # a worker's flow process, or a sweep running its trials
        paths.runner_pid.write_text(str(os.getpid()))
    return Submission(job=spec, run_id=run_id, experiment=experiment, workspace=ws, paths=paths,
                      record=record, log=RunLog(paths.output_log),
                      cancel=CancelFlag(paths), store=ObjectStore(ws.objects))
