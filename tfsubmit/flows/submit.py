"""The `submit-training` flow: snapshot, environment, nodes, launch, collect."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
from prefect import Task, flow
from prefect.exceptions import TerminationSignal
from prefect.runtime import flow_run
from prefect.states import State

from tfsubmit.errors import TfsubmitError
from tfsubmit.flows.common import flow_run_name, label_flow_run, prefect_state
from tfsubmit.pipeline.context import Submission, open_submission
from tfsubmit.pipeline.execute import Steps, run_steps
from tfsubmit.service.prefect_api import PrefectAPI
from tfsubmit.store.cancel import CANCELED_FROM_PREFECT, request_cancel
from tfsubmit.store.layout import RUNNER_ENV
from tfsubmit.targets.base import Target
from tfsubmit.targets.config import get_target
from tfsubmit.tasks import (
    collect_outputs,
    launch_topology,
    provision_nodes,
    resolve_environment,
    snapshot_source,
)
from tfsubmit.tasks._kept import MISSING, forget, result_of
from tfsubmit.tasks.blocks import load_block_target
from tfsubmit.tasks.progress import RunArtifacts

# Seconds between looks at the flow run's state for a cancel from Prefect.
PREFECT_CANCEL_POLL = 2.0


def _watch_prefect_cancel(sub: Submission, flow_run_id: str, done: threading.Event) -> None:
    """A cancel from the UI or API sets the flow run Cancelling: stop the job's processes in
    order, as `Run.cancel()` does (whether a worker or tfsubmit's runner executes it)."""
    api = PrefectAPI(os.environ["PREFECT_API_URL"], timeout=10)
    while not done.wait(PREFECT_CANCEL_POLL):
        try:
            asked = api.cancel_asked(flow_run_id)
        except TfsubmitError:
            continue
        if asked:
            request_cancel(sub.paths, CANCELED_FROM_PREFECT)
            return


class Reporting:
    """The run's link to the Prefect API. Each step runs as a Prefect task while the API
    answers; once a call fails (the server died, or stays overloaded past the client's
    retries) the run goes on without it, each step's body called directly, so a job whose
    processes finished is recorded from their exit codes, not failed for want of a server.
    The runner brings the flow run's state up to date when the API answers again."""

    def __init__(self, sub: Submission) -> None:
        self.sub = sub
        self.lost: str | None = None

    def call(self, report: Callable[..., Any], *args: Any) -> None:
        """A report that the run can do without."""
        if self.lost is None:
            try:
                report(*args)
            except Exception as exc:  # noqa: BLE001 (any failure of the API means the same)
                self._lose(exc)

    def step(self, task: Task, *args: Any) -> Any:
        if self.lost is not None:
            return task.fn(*args)
        try:
            return task(*args)
        except Exception as exc:
            if not isinstance(exc, httpx.HTTPError):
                raise
            self._lose(exc)
            started, value = result_of(self.sub.run_id, task.name)
            if value is not MISSING:
                return value  # it ran; only its report to Prefect was lost
            if started:
                raise  # the body itself failed, and so did the report of it
            return task.fn(*args)

    def _lose(self, exc: Exception) -> None:
        self.lost = f"{type(exc).__name__}: {exc}"
        self.sub.record.note(prefect_pending=True)
        self.sub.log.event(f"the Prefect API stopped answering ({self.lost}); the run goes on "
                           "and reports to it again once it answers")


def _target_of(sub: Submission) -> Target:
    api = os.environ.get("PREFECT_API_URL")
    return get_target(sub.job.compute_target, sub.workspace.root,
                      find_block=lambda name: load_block_target(name, api))


@flow(name="submit-training", flow_run_name=flow_run_name, log_prints=False)
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
    sub = open_submission(job, experiment, run_id, workspace)
    reporting = Reporting(sub)
    reporting.call(label_flow_run, sub.run_id, sub.experiment)
    artifacts = RunArtifacts(sub.run_id)
    sub.record.preparing(
        flow_run_id=str(flow_run.id),
        prefect_api_url=os.environ.get("PREFECT_API_URL"),
        prepared=time.time(),
        topology=sub.job.topology,
    )
    under_runner = os.environ.get(RUNNER_ENV) == sub.run_id
    done = threading.Event()
    if os.environ.get("PREFECT_API_URL"):  # a cancel from the UI or API, however it started
        threading.Thread(target=_watch_prefect_cancel, args=(sub, str(flow_run.id), done),
                         daemon=True).start()
    step = reporting.step
    steps = Steps(  # each one a Prefect task while the API answers
        snapshot=lambda sub: step(snapshot_source, sub),
        environment=lambda sub, target: step(resolve_environment, sub, target),
        provision=lambda sub, target, snap, env: step(provision_nodes, sub, target, snap, env),
        launch=lambda sub, target, nodes, env: step(launch_topology, sub, target, nodes, env,
                                                    artifacts),
    )
    target, nodes, outcome = run_steps(sub, lambda: _target_of(sub), steps,
                                       stop_signals=(TerminationSignal,))
    try:
        record = reporting.step(collect_outputs, sub, target, nodes, outcome, artifacts)
    finally:
        done.set()
        forget(sub.run_id)
        if target is not None:
            target.close()
    if not under_runner:  # e.g. a Prefect deployment's worker: nobody else ends the run
        record = sub.record.end()
        sub.record.release_lock()
    sub.log.close()
    return prefect_state(record)
