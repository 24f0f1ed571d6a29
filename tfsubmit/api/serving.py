"""Registered models and their endpoints, as users call them.

    models(workspace)                     the registry: every version of every model
    deploy(name, "model[:version]", ...)  a `deploy-model` flow run; returns an Endpoint
    Endpoint(name)                        state, scoring_uri, run(data), update, delete
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tfsubmit.errors import EndpointError
from tfsubmit.service.prefect_api import PrefectAPI, flow_run_link
from tfsubmit.service.server import deployment_ids, ensure_server
from tfsubmit.serving.endpoints import Endpoints
from tfsubmit.store.layout import Workspace
from tfsubmit.store.registry import ModelRegistry

ENDED = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def models(workspace: str | Path | None = None, name: str | None = None) -> list[dict[str, Any]]:
    """Every registered version (of `name` only, if given), by name then version."""
    registry = ModelRegistry(Workspace(workspace))
    names = [name] if name else registry.names()
    return [info for each in names for info in registry.versions(each)]


def _print(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def deploy(name: str, model: str, *, workspace: str | Path | None = None,
           score_script: str | None = None, source_directory: str | None = None,
           target: str = "local", port: int | None = None, auth: bool = False,
           pip_packages: tuple[str, ...] | list[str] = (), overwrite: bool = False,
           show_output: bool = True, timeout: float = 900.0,
           wait: bool = True) -> Endpoint:
    """Serve registered model `model` ("name" or "name:version") as endpoint `name`, on
    `target` (local, or a docker target of targets.yaml): with `score_script` (init and
    run, Azure's contract) or, without one, TensorFlow Serving's REST API. Redeploying an
    endpoint that serves needs overwrite=True, and is an update."""
    ws = Workspace(workspace)
    endpoints = Endpoints(ws)
    version = endpoints.plan(name, model, score_script=score_script,
                             source_directory=source_directory, target=target, port=port,
                             auth=auth, pip_packages=pip_packages, overwrite=overwrite)
    endpoint = Endpoint(name, workspace=ws.root)
    endpoint._flow_run = _hand_over(ws, name, version, _print if show_output else None)
    endpoint._version = version
    if wait:
        endpoint.wait_for_deployment(show_output=show_output, timeout=timeout)
    return endpoint


def _hand_over(ws: Workspace, name: str, version: int,
               say: Callable[[str], None] | None) -> str:
    info = ensure_server(ws, say=say or (lambda text: None))
    api = PrefectAPI(info.api_url)
    try:
        flow_run = api.create_flow_run(
            deployment_ids(ws)["deploy-model"], name=f"deploy-{name}-v{version}",
            parameters={"endpoint": name, "version": version, "workspace": str(ws.root)},
            tags=["endpoint", name])
    finally:
        api.close()
    if say:
        say(f"deploying {name} version {version} in Prefect: "
            f"{flow_run_link(info.api_url, flow_run['id'])}")
    return flow_run["id"]


class Endpoint:
    """An endpoint of the workspace (Azure ML's Webservice)."""

    def __init__(self, name: str, *, workspace: str | Path | None = None) -> None:
        self.workspace = Workspace(workspace)
        self._endpoints = Endpoints(self.workspace)
        self.name = name
        self._endpoints.config(name)  # EndpointError for one that does not exist
        self._flow_run: str | None = None
        self._version: int | None = None

    def __repr__(self) -> str:
        return f"Endpoint(name={self.name!r}, state={self.state!r})"

    # -- state -----------------------------------------------------------------------------

    def details(self) -> dict[str, Any]:
        return self._endpoints.state(self.name)

    @property
    def state(self) -> str:
        return self.details()["state"]

    @property
    def scoring_uri(self) -> str:
        return self.details()["scoring_uri"]

    @property
    def swagger_uri(self) -> str:
        return self.details()["swagger_uri"]

    @property
    def base_uri(self) -> str:
        return self.details()["base_uri"]

    @property
    def model(self) -> str:
        return self.details()["model"]

    def get_keys(self) -> tuple[str, str]:
        """The primary and secondary key (deployed with auth), else EndpointError."""
        keys = self.details()["keys"]
        if not keys:
            raise EndpointError(f"endpoint {self.name} was deployed without auth: it takes "
                                "no key")
        return keys[0], keys[1]

    def get_logs(self, num_lines: int = 5000) -> str:
        return self._endpoints.tail(self.name, num_lines)

    # -- waiting ---------------------------------------------------------------------------

    def wait_for_deployment(self, show_output: bool = False, timeout: float = 900.0) -> None:
        """Until the deployed version is Healthy, printing the deployment's log lines with
        show_output; EndpointError with the reason when it failed (or its deploy-model flow
        run ended without it)."""
        version = self._version or self._endpoints.config(self.name)["current"]
        api = None
        if self._flow_run:
            from tfsubmit.service.server import api_url

            url = api_url(self.workspace, start=False)
            api = PrefectAPI(url) if url else None

        def gave_up() -> str | None:
            state = (api.flow_run(self._flow_run).get("state") or {}) if api else {}
            if state.get("type") in ENDED:
                return f"was not deployed: its flow run ended {state.get('name')}: " \
                       f"{state.get('message') or ''}"
            return None

        try:
            self._endpoints.wait_healthy(self.name, version, timeout=timeout, gave_up=gave_up,
                                         say=_print if show_output else lambda line: None)
        finally:
            if api:
                api.close()

    # -- using -----------------------------------------------------------------------------

    def run(self, input_data: Any) -> Any:
        """POST input_data (a JSON string, or a value sent as JSON) to the scoring URI;
        the reply's JSON. EndpointError with the server's message for an error reply."""
        body = input_data if isinstance(input_data, (str, bytes)) else json.dumps(input_data)
        details = self.details()
        headers = {"Content-Type": "application/json"}
        if details["keys"]:
            headers["Authorization"] = f"Bearer {details['keys'][0]}"
        data = body.encode() if isinstance(body, str) else body
        request = urllib.request.Request(details["scoring_uri"], data=data, headers=headers,
                                         method="POST")
        try:
            with urllib.request.urlopen(request, timeout=60) as reply:
                return json.loads(reply.read())
        except urllib.error.HTTPError as exc:
            text = exc.read().decode("utf-8", "replace")
            try:
                text = json.loads(text).get("error", text)
            except (ValueError, AttributeError):
                pass
            raise EndpointError(f"endpoint {self.name} answered {exc.code}: {text}") from None
        except OSError as exc:
            raise EndpointError(f"endpoint {self.name} at {details['scoring_uri']} did not "
                                f"answer ({exc}); its state: {details['state']}") from None

    # -- changing --------------------------------------------------------------------------

    def update(self, model: str | None = None, *, score_script: str | None = None,
               source_directory: str | None = None,
               pip_packages: tuple[str, ...] | list[str] = (), show_output: bool = False,
               timeout: float = 900.0, wait: bool = True) -> None:
        """Serve another model version (or scoring script): started beside the old one,
        switched to once Healthy; the old one then stops. No request is refused."""
        version = self._endpoints.plan_update(self.name, model, score_script=score_script,
                                              source_directory=source_directory,
                                              pip_packages=pip_packages)
        self._version = version
        self._flow_run = _hand_over(self.workspace, self.name, version,
                                    _print if show_output else None)
        if wait:
            self.wait_for_deployment(show_output=show_output, timeout=timeout)

    def delete(self) -> None:
        """Stop it, leaving nothing running; its log is kept under endpoints/.deleted/."""
        self._endpoints.delete(self.name)


def endpoints(workspace: str | Path | None = None) -> list[dict[str, Any]]:
    found = Endpoints(Workspace(workspace))
    return [found.state(name) for name in found.names()]
