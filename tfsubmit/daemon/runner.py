"""The workspace's flow server: tfsubmit's flows as Prefect deployments, and the fork server
that starts their flow runs.

`python -m tfsubmit.daemon.runner --fork-server WORKSPACE` imports Prefect and tfsubmit's
flows once, registers the flows as deployments of the workspace's process work pool (their
`command` is `service/flowrun.py`, which asks this process to fork the engine), then serves
forks (`service/forkserver.py`). The workspace's Prefect worker (`service/server.py`) polls
that pool and starts each flow run; Prefect's engine runs the flow, its tasks and states.
"""

from __future__ import annotations

import os
import runpy
import sys
import time
import warnings
from typing import Any

from tfsubmit.service import forkserver
from tfsubmit.service.flowrun import RETRIES_ENV, SOCKET_ENV
from tfsubmit.service.server import (
    CLIENT_RETRIES,
    START_TIMEOUT,
    concurrency_limit,
    healthy,
    pool_name,
)
from tfsubmit.store.layout import Workspace

# The flows served, by flow name: (module:function entrypoint, what a run of it does).
FLOWS = {
    "submit-training": ("tfsubmit.flows.submit:submit_training",
                        "Train one tfsubmit job; Experiment.submit and `tfsubmit submit` "
                        "make its flow runs"),
    "sweep": ("tfsubmit.flows.sweep:run_sweep",
              "A hyperparameter sweep of tfsubmit trials (child flow runs)"),
    "deploy-model": ("tfsubmit.flows.serve:deploy_model",
                     "Serve a registered model: one version of an endpoint "
                     "(`tfsubmit deploy`, Model.deploy, service.update)"),
}


def _register(workspace: Workspace) -> dict[str, str]:
    """Create the work pool (if missing) and apply the deployments; their ids by flow."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.deployments.runner import RunnerDeployment
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.utilities.importtools import import_object
    from prefect.workers.process import ProcessWorker

    pool = pool_name(workspace)
    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(
                name=pool, type="process",
                base_job_template=ProcessWorker.get_default_base_job_template(),
                description=f"tfsubmit's runs of workspace {workspace.root}"))
        except ObjectAlreadyExists:
            pass
        # The concurrency limit on the pool's queue: the server then hands the worker only
        # the runs it has slots for (without it, every poll lists every waiting run, a
        # cost that grows with the queue), and the UI shows the limit where users set it.
        queue = client.read_work_queue_by_name("default", work_pool_name=pool)
        if queue.concurrency_limit != concurrency_limit():
            client.update_work_queue(queue.id, concurrency_limit=concurrency_limit())
    ids = {}
    for name, (entrypoint, description) in FLOWS.items():
        deployment = RunnerDeployment.from_flow(
            import_object(entrypoint), name=pool, work_pool_name=pool,
            description=f"{description} (workspace {workspace.root})",
            parameters={"workspace": str(workspace.root)},
            job_variables={
                "command": f"{sys.executable} -m tfsubmit.service.flowrun",
                "working_dir": str(workspace.root),
                "env": {SOCKET_ENV: str(workspace.forkserver_socket),
                        RETRIES_ENV: CLIENT_RETRIES},
            },
            tags=["tfsubmit"])
        deployment.entrypoint = entrypoint  # a module path: found wherever tfsubmit is
        ids[name] = str(deployment.apply())
    return ids


def _engine() -> int:
    """`python -m prefect.engine`, in this forked child (see forkserver.serve)."""
    from prefect.context import refresh_global_settings_context

    refresh_global_settings_context()  # the worker's settings, not the server's
    sys.argv = ["prefect.engine"]  # the flow run's id is in PREFECT__FLOW_RUN_ID
    try:
        with warnings.catch_warnings():  # prefect.engine is imported already, on purpose
            warnings.filterwarnings("ignore", "'prefect.engine' found in sys.modules",
                                    RuntimeWarning)
            runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def serve_forks(workspace_root: str) -> None:
    import prefect.engine  # noqa: F401  (the point of this process: import once)
    import prefect.flow_engine  # noqa: F401

    import tfsubmit.flows.submit  # noqa: F401
    import tfsubmit.flows.sweep  # noqa: F401

    workspace = Workspace(workspace_root)
    # Started with its server (so that Prefect is imported while the server boots): the
    # deployments are registered once the API answers.
    deadline = time.monotonic() + START_TIMEOUT
    while not healthy(os.environ.get("PREFECT_API_URL", "")) and time.monotonic() < deadline:
        time.sleep(0.1)
    ids = _in_a_child(lambda: _register(workspace))
    forkserver.serve(workspace, _engine, ready={"deployments": ids,
                                                "pool": pool_name(workspace)})


def _in_a_child(work) -> Any:
    """Run `work` in a forked child and return what it returned (JSON): Prefect's client
    leaves threads behind, and the fork server must hold none."""
    import json

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        code = 1
        try:
            os.write(write, json.dumps(work()).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as out:
        data = out.read()
    _, status = os.waitpid(pid, 0)
    if status != 0 or not data:
        raise SystemExit(f"tfsubmit fork server: registering the deployments failed "
                         f"(status {status})")
    return json.loads(data)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--fork-server"]:
        serve_forks(sys.argv[2])
    else:
        sys.exit("usage: python -m tfsubmit.daemon.runner --fork-server WORKSPACE")
