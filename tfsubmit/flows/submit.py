"""The `submit-training` flow: snapshot, environment, nodes, launch, collect."""

from __future__ import annotations

import os
import time
import traceback
from typing import Any

from prefect import flow
from prefect.runtime import flow_run
from prefect.states import Cancelled, Completed, Failed, State

from tfsubmit.errors import TfsubmitError
from tfsubmit.runlog import RunLog
from tfsubmit.spec import TrainingJob, load_job_file, validate_experiment_name
from tfsubmit.submission import RunCanceled, Submission
from tfsubmit.supervisor import Outcome
from tfsubmit.targets import get_target
from tfsubmit.tasks import (
    collect_outputs,
    launch_topology,
    provision_nodes,
    resolve_environment,
    snapshot_source,
)
from tfsubmit.workspace import Workspace


def _flow_run_name() -> str:
    params = flow_run.parameters
    return params.get("run_id") or f"{params.get('experiment') or 'default'}-run"


def _open_submission(job: dict[str, Any] | str, experiment: str | None, run_id: str | None,
                     workspace: str | None) -> tuple[TrainingJob, Submission]:
    ws = Workspace(workspace)
    if isinstance(job, str):
        spec, file_experiment = load_job_file(job)
        experiment = experiment or file_experiment
    else:
        spec = TrainingJob.from_dict(job)
    experiment = validate_experiment_name(experiment or "default")
    if run_id is None or not (ws.runs / run_id / "run.json").exists():
        run_id = run_id or ws.new_run_id(experiment)
        ws.create_run(run_id, experiment, spec.to_dict())
    paths = ws.run_paths(run_id)
    return spec, Submission(ws, run_id, experiment, paths, RunLog(paths.output_log))


@flow(name="submit-training", flow_run_name=_flow_run_name, log_prints=False)
def submit_training(
    job: dict[str, Any] | str,
    experiment: str | None = None,
    run_id: str | None = None,
    workspace: str | None = None,
) -> State:
    """Run one training job end to end.

    Args:
        job: the job spec as a mapping, or the path of a job YAML file.
        experiment: experiment name (default: the YAML's `experiment`, else "default").
        run_id: an existing run folder to use (made by `Experiment.submit`), or None.
        workspace: the workspace folder (default: TFSUBMIT_WORKSPACE or ~/.tfsubmit).
    """
    spec, sub = _open_submission(job, experiment, run_id, workspace)
    sub.record(
        status="Preparing",
        flow_run_id=str(flow_run.id),
        prefect_api_url=os.environ.get("PREFECT_API_URL"),
        prepared=time.time(),
    )
    nodes = []
    try:
        sub.target = get_target(spec.compute_target, sub.workspace.root)
        snapshot = snapshot_source(spec, sub)
        env = resolve_environment(spec, sub)
        nodes = provision_nodes(spec, sub, snapshot, env)
        outcome = launch_topology(spec, sub, nodes, env)
    except RunCanceled as exc:
        outcome = Outcome("Canceled", str(exc))
    except TfsubmitError as exc:
        sub.log.event(f"error: {exc}")
        outcome = Outcome("Failed", str(exc))
    except Exception as exc:  # a bug of ours: keep the traceback with the run
        sub.log.event("internal error:\n" + traceback.format_exc())
        outcome = Outcome("Failed", f"internal error: {exc!r}")
    try:
        record = collect_outputs(sub, nodes, outcome)
    finally:
        if sub.target is not None:
            sub.target.close()
    if os.environ.get("TFSUBMIT_RUNNER_OF") != sub.run_id:
        # Not under tfsubmit's runner (e.g. a Prefect deployment): nobody else will set it.
        record = sub.record(status=record["outcome"])
    sub.log.close()
    if record["outcome"] == "Completed":
        return Completed(message="training completed")
    if record["outcome"] == "Canceled":
        return Cancelled(message=record.get("error") or "canceled")
    return Failed(message=record.get("error") or "failed")

