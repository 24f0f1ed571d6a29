"""The `submit-training` flow: snapshot, environment, nodes, launch, collect."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
from prefect import Task, flow, get_run_logger
from prefect.exceptions import TerminationSignal
from prefect.runtime import flow_run
from prefect.states import Failed, State

from tfsubmit.flows.common import flow_run_name, label_flow_run, prefect_state
from tfsubmit.pipeline.context import Submission, hold_secrets, open_submission
from tfsubmit.pipeline.execute import Steps, run_steps
from tfsubmit.pipeline.reap import reap_abandoned
from tfsubmit.service.forkserver import held
from tfsubmit.service.server import healthy
from tfsubmit.store.cancel import folder_gone
from tfsubmit.store.layout import Workspace, read_record
from tfsubmit.system.processes import become_subreaper
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
from tfsubmit.tasks.retries import retrying


class Reporting:
    """The run's link to the Prefect API. Each step runs as a Prefect task while the API
    answers; once a call fails (the server died, or stays overloaded past the client's
    retries) the run goes on without it, each step's body called directly, so a job whose
    processes finished is recorded from their exit codes, not failed for want of a server.
    Prefect's engine reports the flow run's end if the API answers again by then."""

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
        """Run `task` (its body directly once the API is lost); what its body returned,
        even where the task ended Failed or Cancelled (a job that failed), or what it
        raised."""
        if self.lost is not None:
            return _value(task.fn(*args))
        try:
            state = task(*args, return_state=True)
        except Exception as exc:
            if not isinstance(exc, httpx.HTTPError):
                raise
            self._lose(exc)
            started, value = result_of(self.sub.run_id, task.name)
            if value is not MISSING:
                return _value(value)  # it ran; only its report to Prefect was lost
            if started:
                raise  # the body itself failed, and so did the report of it
            return _value(task.fn(*args))
        value = _value(state)
        if isinstance(value, BaseException):
            raise value
        return value

    def _lose(self, exc: Exception) -> None:
        self.lost = f"{type(exc).__name__}: {exc}"
        self.sub.log.event(f"the Prefect API stopped answering ({self.lost}); the run goes on "
                           "and reports to it again once it answers")


def _value(result: Any) -> Any:
    """What a task's body returned: a State's data (a launch whose job failed) or itself."""
    return result.result(raise_on_failure=False) if isinstance(result, State) else result


def _target_of(sub: Submission) -> Target:
    api = os.environ.get("PREFECT_API_URL")
    return get_target(sub.job.compute_target, sub.workspace.root,
                      find_block=lambda name: load_block_target(name, api))


@flow(name="submit-training", flow_run_name=flow_run_name, log_prints=False)
def submit_training(
    job: dict[str, Any] | str | None = None,
    experiment: str | None = None,
    run_id: str | None = None,
    workspace: str | None = None,
) -> State:
    """Run one training job end to end.

    Args:
        job: the job spec as a mapping, or the path of a job YAML file; None for a run
            whose folder Experiment.submit made (its job.json).
        experiment: experiment name (default: the YAML's `experiment`, else "default").
        run_id: the run folder Experiment.submit made, or None for a new run.
        workspace: the workspace folder (default: TFSUBMIT_WORKSPACE or ~/.tfsubmit).
    """
    become_subreaper()  # the job's double-forked helpers stay this process's to stop
    if run_id is not None:
        take_hand_over(run_id)
    sub = open_submission(job, experiment, run_id, workspace,
                          attempt=flow_run.run_count or 1)
    if sub is None:  # it ended before its flow run started (canceled while queued)
        return prefect_state(read_record(Workspace(workspace).run_paths(run_id).record))
    reap_in_background(sub.workspace, sub.run_id)
    reporting = Reporting(sub)
    reporting.call(label_flow_run, sub.run_id, sub.experiment)
    artifacts = RunArtifacts(sub.run_id)
    sub.record.preparing(
        flow_run_id=str(flow_run.id),
        prefect_api_url=os.environ.get("PREFECT_API_URL"),
        prepared=time.time(),
        topology=sub.job.topology,
    )
    step = reporting.step
    # A package index or a host that does not answer yet may answer on a later try.
    environment, provision = retrying(resolve_environment), retrying(provision_nodes)
    steps = Steps(  # each one a Prefect task while the API answers
        snapshot=lambda sub: step(snapshot_source, sub),
        environment=lambda sub, target: step(environment, sub, target),
        provision=lambda sub, target, snap, env: step(provision, sub, target, snap, env),
        launch=lambda sub, target, nodes, env: step(launch_topology, sub, target, nodes, env,
                                                    artifacts),
    )
    target, nodes, outcome = run_steps(sub, lambda: _target_of(sub), steps,
                                       stop_signals=(TerminationSignal,))
    if sub.cancel.folder_gone():  # deleted while it ran: its processes are stopped; say so
        if target is not None:
            target.close()
        forget(sub.run_id)
        get_run_logger().error(folder_gone(sub.paths.root))
        return Failed(message=folder_gone(sub.paths.root))
    try:
        reporting.step(collect_outputs, sub, target, nodes, outcome, artifacts)
    finally:
        forget(sub.run_id)
        if target is not None:
            target.close()
    record = sub.record.end()
    sub.record.release_lock()
    if not healthy(os.environ.get("PREFECT_API_URL", "")):
        _await_api(sub)
    sub.log.close()
    return prefect_state(record)


# How long a run that lost the Prefect API waits, once it has ended, for the API to answer
# again, so that Prefect's engine reports the flow run's end (its record says it already).
CATCH_UP_SECONDS = 600.0


def _await_api(sub: Submission) -> None:
    url = os.environ.get("PREFECT_API_URL", "")
    sub.log.event(f"run {sub.run_id} has ended; its flow run's end reaches Prefect once the "
                  f"API answers again (waiting up to {CATCH_UP_SECONDS:.0f} s)")
    deadline = time.monotonic() + CATCH_UP_SECONDS
    while time.monotonic() < deadline:
        if healthy(url):
            return
        time.sleep(2.0)


def reap_in_background(workspace: Workspace, own_id: str) -> None:
    """Each run looks, in the background, for runs whose flow run's process died while
    nobody read them, and reaps them (what is left of them would otherwise keep running)."""
    api = os.environ.get("PREFECT_API_URL")
    threading.Thread(target=reap_abandoned, args=(workspace,),
                     kwargs={"skip": own_id,
                             "find_block": lambda name: load_block_target(name, api)},
                     daemon=True, name="reap-abandoned").start()


def take_hand_over(run_id: str) -> None:
    """What the submitter of `run_id` handed the fork server (its secret values, its
    environment and working directory), taken by this flow run's process."""
    given = held(run_id)
    if given is None:
        return
    hold_secrets(given["secrets"])
    # The job sees the submitter's environment; Prefect's own settings stay the worker's.
    os.environ.update({key: value for key, value in given["env"].items()
                       if not key.startswith("PREFECT")})
    try:
        os.chdir(given["cwd"])
    except OSError:
        pass  # removed since: relative paths of the job are already resolved
