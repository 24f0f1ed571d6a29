"""The `submit-training` flow: snapshot, environment, nodes, launch, collect."""

from __future__ import annotations

import os
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

from prefect import flow
from prefect.client.orchestration import get_client
from prefect.exceptions import TerminationSignal
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
from tfsubmit.tasks.progress import RunArtifacts
from tfsubmit.workspace import Workspace

T = TypeVar("T")


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
    pid_file = paths.root / "runner.pid"
    if not pid_file.exists():  # a worker's flow process, or a sweep running its trials
        pid_file.write_text(str(os.getpid()))
    return spec, Submission(ws, run_id, experiment, paths, RunLog(paths.output_log))


def _label_flow_run(run_id: str, experiment: str) -> None:
    """Name the flow run after the run and tag it with the experiment, however it was started
    (tfsubmit's runner, `prefect deployment run`, a schedule): `tfsubmit runs --experiment`
    and the UI's filters find it by that tag."""
    tags = sorted({*(flow_run.tags or []), experiment})
    with get_client(sync_client=True) as client:
        client.update_flow_run(flow_run.id, name=run_id, tags=tags)


def _watch_prefect_cancel(sub: Submission, done: threading.Event) -> None:
    """Under a Prefect worker, a cancel from the UI or API sets the flow run Cancelling:
    stop the job's processes in order, as `Run.cancel()` does."""
    from tfsubmit.prefect_api import PrefectAPI

    api = PrefectAPI(os.environ["PREFECT_API_URL"])
    while not done.wait(1.0):
        try:
            state = (api.flow_run(str(flow_run.id)).get("state") or {}).get("type")
        except TfsubmitError:
            continue
        if state in ("CANCELLING", "CANCELLED"):
            sub.cancel.set()
            return


def _timed(sub: Submission, steps: dict[str, float], name: str, step: Callable[[], T]) -> T:
    began = time.monotonic()
    try:
        return step()
    finally:
        steps[name] = round(time.monotonic() - began, 3)
        sub.record(steps=steps)


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
    _label_flow_run(sub.run_id, sub.experiment)
    sub.artifacts = RunArtifacts(sub.run_id)
    sub.record(
        status="Preparing",
        flow_run_id=str(flow_run.id),
        prefect_api_url=os.environ.get("PREFECT_API_URL"),
        prepared=time.time(),
        topology=spec.topology,
    )
    under_runner = os.environ.get("TFSUBMIT_RUNNER_OF") == sub.run_id
    done = threading.Event()
    if not under_runner and os.environ.get("PREFECT_API_URL"):
        threading.Thread(target=_watch_prefect_cancel, args=(sub, done), daemon=True).start()
    nodes = []
    steps: dict[str, float] = {}
    try:
        sub.target = get_target(spec.compute_target, sub.workspace.root)
        snapshot = _timed(sub, steps, "snapshot_source", lambda: snapshot_source(spec, sub))
        env = _timed(sub, steps, "resolve_environment", lambda: resolve_environment(spec, sub))
        nodes = _timed(sub, steps, "provision_nodes",
                       lambda: provision_nodes(spec, sub, snapshot, env))
        sub.record(hosts=[node.host for node in nodes])
        outcome = _timed(sub, steps, "launch_topology",
                         lambda: launch_topology(spec, sub, nodes, env))
    except RunCanceled as exc:
        outcome = Outcome("Canceled", str(exc))
    except TerminationSignal:
        # A Prefect worker stops the flow run's process (a cancel from the UI or the API):
        # the job's processes are already stopped; keep its logs and outputs.
        sub.log.event("the flow run's process was told to stop (SIGTERM); canceling")
        outcome = Outcome("Canceled", "canceled: the flow run was stopped by its worker")
    except TfsubmitError as exc:
        sub.log.event(f"error: {exc}")
        outcome = Outcome("Failed", str(exc))
    except Exception as exc:  # a bug of ours: keep the traceback with the run
        sub.log.event("internal error:\n" + traceback.format_exc())
        outcome = Outcome("Failed", f"internal error: {exc!r}")
    try:
        record = collect_outputs(sub, nodes, outcome)
    finally:
        done.set()
        if sub.target is not None:
            sub.target.close()
    if not under_runner:
        # Not under tfsubmit's runner (e.g. a Prefect deployment): nobody else will set it.
        record = sub.record(status=record["outcome"])
    sub.log.close()
    if record["outcome"] == "Completed":
        return Completed(message="training completed")
    if record["outcome"] == "Canceled":
        return Cancelled(message=record.get("error") or "canceled")
    return Failed(message=record.get("error") or "failed")

