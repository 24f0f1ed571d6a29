"""Handing a run over to Prefect: a flow run of the workspace's deployment, created by the
submitter (Experiment.submit, `tfsubmit submit`, a sweep's resume) and started by the
workspace's worker."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator

from tfsubmit.errors import ServerError
from tfsubmit.service import forkserver
from tfsubmit.service.prefect_api import PrefectAPI, flow_run_link
from tfsubmit.service.server import ServerInfo, database_url, deployment_ids, ensure_server
from tfsubmit.store.layout import Workspace
from tfsubmit.store.record import RunRecord


def hand_over(workspace: Workspace, record: RunRecord, secrets: dict[str, str], *,
              flow: str = "submit-training",
              say: Callable[[str], None] = lambda text: None) -> str:
    """Make the run a flow run of the workspace's `flow` deployment, which its worker starts
    (starting the workspace's server and flow service first where they are down); the
    run's secret values, environment and working directory go to the fork server, in
    memory only. Returns the flow run's id. A run that cannot be handed over ends Failed,
    saying why; either way the submitter lets go of the run's lock."""
    try:
        info = ensure_server(workspace, say=say)
        deployment = deployment_ids(workspace)[flow]
        run_id = record.paths.root.name
        if not forkserver.hand_over(workspace, run_id, env=dict(os.environ), cwd=os.getcwd(),
                                    secrets=secrets) and secrets:
            raise ServerError("the workspace's fork server did not take the job's secret "
                              f"values; see {workspace.forkserver_log}")
        api = PrefectAPI(info.api_url)
        try:
            facts = record.read()
            with _one_at_a_time(workspace, info):
                flow_run = api.create_flow_run(
                    deployment, name=run_id, tags=[facts.get("experiment") or "default"],
                    parameters={"run_id": run_id, "workspace": str(workspace.root)})
        finally:
            api.close()
        record.note(flow_run_id=flow_run["id"], prefect_api_url=info.api_url)
        say(f"run {run_id} in Prefect: {flow_run_link(info.api_url, flow_run['id'])}")
        return flow_run["id"]
    except BaseException as exc:
        record.failed(f"it could not be handed to Prefect: {exc}")
        raise
    finally:
        record.release_lock()


@contextlib.contextmanager
def _one_at_a_time(workspace: Workspace, info: ServerInfo) -> Iterator[None]:
    """Flow runs are created one at a time from this workspace when its embedded server
    keeps them in SQLite: many submitters at once otherwise lock each other out (503 "the
    database is locked") past every retry. PostgreSQL, or a server of the user's, takes
    them all at once."""
    if not info.embedded or database_url(workspace):
        yield
        return
    with workspace.submit_lock.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
