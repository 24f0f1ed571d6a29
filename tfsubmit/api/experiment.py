"""The user's face: `Experiment(name).submit(job) -> Run`.

Submitting prepares the run folder and creates a flow run of the workspace's
`submit-training` deployment, which the workspace's Prefect worker starts (Prefect's engine
runs the flow and its tasks); the `Run` reads the run folder, so any process can follow,
list or cancel it.
With `deployment=`, the job becomes a flow run of a Prefect deployment instead, executed by
that deployment's worker; the `DeploymentRun` returned reads everything through the API.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tfsubmit.api.runs import BaseRun, DeploymentRun, Run, SweepRun, block_finder
from tfsubmit.errors import TfsubmitError
from tfsubmit.service.handover import hand_over
from tfsubmit.service.prefect_api import PrefectAPI
from tfsubmit.service.server import api_url
from tfsubmit.spec.job import TrainingJob, validate_experiment_name
from tfsubmit.spec.retries import step_retries
from tfsubmit.spec.sweep import Sweep
from tfsubmit.store.layout import Workspace
from tfsubmit.store.record import RunRecord
from tfsubmit.targets.config import get_target


class Experiment:
    """A named group of runs in a workspace."""

    def __init__(self, name: str = "default", *, workspace: str | Path | None = None) -> None:
        self.name = validate_experiment_name(name)
        self.workspace = Workspace(workspace)

    def submit(self, job: TrainingJob | Sweep, *, deployment: str | None = None) -> BaseRun:
        """Start `job` and return its Run at once; the job runs in a detached process.

        A `tfsubmit.tuning.Sweep` returns a SweepRun: its trials are runs of this experiment.

        With `deployment` ("FLOW/DEPLOYMENT", e.g. "submit-training/default"), create a flow
        run of that Prefect deployment instead; a worker of its pool runs it, and the
        returned run follows it through the Prefect API (PREFECT_API_URL, else the embedded
        server). The job's source_directory must exist where the worker runs.
        """
        if isinstance(job, Sweep):
            if deployment is not None:
                raise TfsubmitError("deployment: sweeps run on this machine's runner; submit "
                                    "the sweep without deployment=")
            return self._submit_sweep(job)
        if deployment is not None:
            return submit_to_deployment(job, deployment, experiment=self.name,
                                        workspace=self.workspace)
        self._check_target(job)
        run_id = self.workspace.new_run_id(self.name)
        record = RunRecord.create(self.workspace, run_id, self.name, job.to_dict())
        hand_over(self.workspace, record, job.secret_values(), say=_say)
        return Run(run_id, workspace=self.workspace.root)

    def _submit_sweep(self, sweep: Sweep) -> SweepRun:
        self._check_target(sweep.estimator)
        run_id = self.workspace.new_run_id(self.name)
        record = RunRecord.create(self.workspace, run_id, self.name, sweep.to_dict(),
                                  kind="sweep", primary_metric=sweep.primary_metric,
                                  goal=sweep.goal, total_runs=sweep.total_runs)
        hand_over(self.workspace, record, sweep.estimator.secret_values(), flow="sweep",
                  say=_say)
        return SweepRun(run_id, workspace=self.workspace.root)

    def _check_target(self, job: TrainingJob) -> None:
        """An unknown target, or one that cannot run the job, fails here, before a run
        exists (as do bad step retry settings, which the run's flow reads)."""
        step_retries()
        target = get_target(job.compute_target, self.workspace.root,
                            find_block=block_finder(self.workspace))
        try:
            target.admit(job)
        finally:
            target.close()

    def get_runs(self) -> list[Run]:
        return [
            (SweepRun if record.get("kind") == "sweep" else Run)(
                record["id"], workspace=self.workspace.root)
            for record in self.workspace.list_runs(self.name)
        ]


def _say(text: str) -> None:
    """A line for whoever submits, beside the run's own (stderr: stdout stays the run's)."""
    print(f"tfsubmit: {text}", file=sys.stderr, flush=True)


def submit_to_deployment(job: TrainingJob, deployment: str, *, experiment: str,
                         workspace: Workspace) -> DeploymentRun:
    """Create a flow run of `deployment` for `job`, named after a new run id."""
    if job.secret_environment_variables:
        raise TfsubmitError(
            "secret_environment_variables: secret values are never sent as a flow run's "
            "parameters, so they cannot reach a deployment's worker; set them in the "
            "worker's own environment (its job variables) instead")
    api = PrefectAPI(api_url(workspace))
    found = api.deployment(deployment)
    if found.get("paused"):
        raise TfsubmitError(f"deployment {deployment!r} is paused; resume it with "
                            f"`prefect deployment resume {deployment}`")
    run_id = workspace.new_run_id(experiment)
    job_data = job.to_dict()
    job_data["source_directory"] = str(Path(job.source_directory).resolve())
    flow_run = api.create_flow_run(
        found["id"],
        parameters={"job": job_data, "experiment": experiment, "run_id": run_id},
        name=run_id,
        tags=[experiment],
    )
    return DeploymentRun(run_id, flow_run["id"], api)
