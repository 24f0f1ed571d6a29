"""A small client of the Prefect REST API: what tfsubmit reads and writes there.

Plain HTTP (httpx) instead of Prefect's client: the CLI and `Run` objects that follow a
deployment run stay quick to start (no `import prefect`), and work from any machine that can
reach the API. A leaf: it starts nothing (service.server.api_url finds or starts a server).
"""

from __future__ import annotations

import random
import time
from typing import Any

import httpx

from tfsubmit.errors import RunNotFoundError, ServerError, TfsubmitError

# Prefect's state types -> tfsubmit's statuses.
STATUS_OF_STATE = {
    "SCHEDULED": "Queued",
    "PENDING": "Queued",
    "PAUSED": "Queued",
    "RUNNING": "Running",
    "CANCELLING": "Running",
    "COMPLETED": "Completed",
    "FAILED": "Failed",
    "CRASHED": "Failed",
    "CANCELLED": "Canceled",
}


# A busy server's answers that mean "try again", and the pauses before each new try.
BUSY = (429, 502, 503)
BUSY_RETRY_SECONDS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0)


# The most rows the Prefect API returns for one filter call.
PAGE = 200


class PrefectAPI:
    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=timeout)

    @property
    def ui_url(self) -> str:
        return self.url.removesuffix("/api")

    def flow_run_link(self, flow_run_id: str) -> str:
        return flow_run_link(self.url, flow_run_id)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """One request. A busy server's "try again" (429, 502, 503: its SQLite database
        locked, say; the request was rolled back) is retried after pauses growing from 0.25 s to
        8 s, each drawn from half to one and a half times that (about 32 s in all); a server
        that does not answer at all fails at once."""
        for delay in (*BUSY_RETRY_SECONDS, None):
            try:
                response = self._http.request(method, path, json=body)
            except httpx.HTTPError as exc:
                raise ServerError(f"the Prefect API at {self.url} does not answer ({exc}); "
                                  "start it or set PREFECT_API_URL") from None
            if response.status_code not in BUSY or delay is None:
                break
            # Spread out: submitters refused together must not all come back together.
            time.sleep(delay * random.uniform(0.5, 1.5))
        if response.status_code == 404:
            raise RunNotFoundError(f"not found in the Prefect API at {self.url}: {path}")
        if response.status_code >= 400:
            raise TfsubmitError(f"the Prefect API at {self.url} refused {method} {path}: "
                                f"{response.status_code} {response.text[:300]}")
        return response.json() if response.content else None

    # -- deployments and flow runs -------------------------------------------------------------

    def deployment(self, name: str) -> dict[str, Any]:
        if "/" not in name:
            raise TfsubmitError(f"deployment {name!r}: write it as 'FLOW/DEPLOYMENT', e.g. "
                                "'submit-training/default'")
        try:
            return self.call("GET", f"/deployments/name/{name}")
        except RunNotFoundError:
            raise TfsubmitError(
                f"no deployment {name!r} in the Prefect API at {self.url}; deploy it with "
                "`prefect deploy --all --prefect-file deployments/prefect.yaml` from the "
                "repository root"
            ) from None

    def create_flow_run(self, deployment_id: str, *, parameters: dict, name: str,
                        tags: list[str]) -> dict[str, Any]:
        return self.call("POST", f"/deployments/{deployment_id}/create_flow_run",
                         {"parameters": parameters, "name": name, "tags": tags})

    def flow_run(self, flow_run_id: str) -> dict[str, Any]:
        return self.call("GET", f"/flow_runs/{flow_run_id}")

    def cancel_asked(self, flow_run_id: str) -> bool:
        """Whether the flow run was set Cancelling (or Cancelled) in Prefect: the UI,
        `prefect flow-run cancel`, the API."""
        state = (self.flow_run(flow_run_id).get("state") or {}).get("type")
        return state in ("CANCELLING", "CANCELLED")

    def flow_runs(self, *, flow_names: list[str] | None = None, tags: list[str] | None = None,
                  name: str | None = None, limit: int = 200, offset: int = 0
                  ) -> list[dict[str, Any]]:
        """Flow runs, newest first; the API answers at most PAGE (200) per call, so more
        are read page by page."""
        found: list[dict[str, Any]] = []
        while len(found) < limit:
            page = self._flow_runs_page(flow_names, tags, name, min(PAGE, limit - len(found)),
                                        offset + len(found))
            found += page
            if len(page) < min(PAGE, limit - len(found) + len(page)):
                break
        return found

    def _flow_runs_page(self, flow_names, tags, name, limit: int, offset: int
                        ) -> list[dict[str, Any]]:
        body: dict[str, Any] = {"sort": "EXPECTED_START_TIME_DESC", "limit": limit,
                                "offset": offset}
        run_filter: dict[str, Any] = {}
        if tags:
            run_filter["tags"] = {"all_": tags}
        if name:
            run_filter["name"] = {"any_": [name]}
        if run_filter:
            body["flow_runs"] = run_filter
        if flow_names:
            body["flows"] = {"name": {"any_": flow_names}}
        return self.call("POST", "/flow_runs/filter", body)

    def cancel(self, flow_run_id: str, message: str = "canceled by the user") -> None:
        """Propose Cancelling, as the UI's Cancel and `prefect flow-run cancel` do (never
        forced: Prefect's orchestration rules decide, and its worker stops the run's
        process); a run not started yet is Cancelled at once."""
        flow_run = self.flow_run(flow_run_id)
        started = (flow_run.get("state") or {}).get("type") in ("RUNNING", "PENDING")
        self.call("POST", f"/flow_runs/{flow_run_id}/set_state",
                  {"state": {"type": "CANCELLING" if started else "CANCELLED",
                             "message": message}})

    # -- logs and artifacts --------------------------------------------------------------------

    def logs(self, flow_run_id: str, *, after: str | None = None, offset: int = 0,
             limit: int = 200) -> list[dict]:
        """A flow run's log lines (its tasks' too) in time order, from `after` (ISO time)."""
        log_filter: dict[str, Any] = {"flow_run_id": {"any_": [flow_run_id]}}
        if after:
            log_filter["timestamp"] = {"after_": after}
        return self.call("POST", "/logs/filter", {
            "logs": log_filter, "sort": "TIMESTAMP_ASC", "offset": offset, "limit": limit,
        })

    def artifacts(self, *, flow_run_id: str | None = None, key: str | None = None,
                  latest: bool = False) -> list[dict[str, Any]]:
        body: dict[str, Any] = {"sort": "CREATED_DESC"}
        artifact_filter: dict[str, Any] = {}
        if key:
            artifact_filter["key"] = {"any_": [key]}
        if flow_run_id:
            artifact_filter["flow_run_id"] = {"any_": [flow_run_id]}
        if artifact_filter:
            body["artifacts"] = artifact_filter
        return self.call("POST", "/artifacts/latest/filter" if latest else "/artifacts/filter",
                         body)

    def link_artifact(self, flow_run_id: str, key: str, link: str, text: str,
                      description: str) -> None:
        """A link on a flow run's page (a new version of the key's artifact)."""
        self.call("POST", "/artifacts/", {
            "key": key, "type": "markdown", "flow_run_id": flow_run_id,
            "data": f"[{text}]({link})", "description": description})

    def close(self) -> None:
        self._http.close()


def flow_run_link(api: str, flow_run_id: str) -> str:
    """The flow run's page in the Prefect UI (the default UI, which `/` serves)."""
    return f"{api.rstrip('/').removesuffix('/api')}/runs/flow-run/{flow_run_id}"


def status_of(flow_run: dict[str, Any]) -> str:
    state = flow_run.get("state") or {}
    return STATUS_OF_STATE.get(state.get("type", "SCHEDULED"), "Queued")


def artifact_key(run_id: str, suffix: str) -> str:
    """The key of one of a run's artifacts: lowercase letters, digits and dashes only."""
    cleaned = "".join(c if c.isalnum() else "-" for c in run_id.lower())
    return f"{cleaned}-{suffix}"[:100]
