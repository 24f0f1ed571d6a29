"""The `deploy-model` flow: one version of an endpoint made to serve, as Prefect tasks
(environment, provision, start, healthy). The endpoint outlives the flow run: its
supervisor keeps it serving (tfsubmit/endpoint/supervisor.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from prefect import flow, get_run_logger, task

from tfsubmit.serving.endpoints import Endpoints
from tfsubmit.spec.environment import Environment
from tfsubmit.store.layout import Workspace
from tfsubmit.tasks.retries import may_pass


def _say(endpoints: Endpoints, name: str):
    """A line to the flow run's log and to the endpoint's, where its deployer follows it."""
    logger = get_run_logger()
    log = endpoints.folder(name) / "deploy.log"  # here, wherever the endpoint runs

    def say(line: str) -> None:
        logger.info(line)
        with log.open("a") as handle:
            handle.write(f"[deploy] {line}\n")
            handle.flush()

    return say


@contextlib.contextmanager
def _opened(workspace: str) -> Iterator[Endpoints]:
    """The workspace's endpoints for one step; their connections closed after it."""
    endpoints = Endpoints(Workspace(workspace))
    try:
        yield endpoints
    finally:
        endpoints.close()


@task(name="environment", retries=1, retry_delay_seconds=10, retry_condition_fn=may_pass)
def inference_environment(workspace: str, endpoint: str, version: int) -> dict:
    with _opened(workspace) as endpoints:
        return endpoints.environment(endpoint, version, _say(endpoints, endpoint)).__dict__


@task(name="provision")
def provision_endpoint(workspace: str, endpoint: str, version: int, env: dict) -> None:
    with _opened(workspace) as endpoints:
        endpoints.provision(endpoint, version, Environment(**env))


@task(name="start")
def start_endpoint(workspace: str, endpoint: str, version: int) -> None:
    with _opened(workspace) as endpoints:
        endpoints.start(endpoint, version, _say(endpoints, endpoint))


@task(name="healthy")
def wait_healthy(workspace: str, endpoint: str, version: int) -> dict:
    with _opened(workspace) as endpoints:
        state = endpoints.wait_healthy(endpoint, version)
    get_run_logger().info(f"endpoint {endpoint} version {version}: Healthy at "
                          f"{state['scoring_uri']}")
    return state


@flow(name="deploy-model", flow_run_name="deploy-{endpoint}-v{version}", log_prints=False)
def deploy_model(endpoint: str, version: int, workspace: str | None = None) -> dict:
    """Make version `version` of endpoint `endpoint` serve: its inference environment
    (built once, cached), its spec, its supervisor started (or asked to switch), until it
    answers Healthy.

    Args:
        endpoint: the endpoint's name (`tfsubmit endpoints`).
        version: the endpoint version that `tfsubmit deploy` planned.
        workspace: the workspace folder (default: TFSUBMIT_WORKSPACE or ~/.tfsubmit).
    """
    ws = str(Workspace(workspace).root)
    try:
        env = inference_environment(ws, endpoint, version)
        provision_endpoint(ws, endpoint, version, env)
        start_endpoint(ws, endpoint, version)
        return wait_healthy(ws, endpoint, version)
    except Exception as exc:
        with _opened(ws) as endpoints:
            endpoints.deployment_failed(endpoint, version, str(exc).splitlines()[0][:500])
        raise
