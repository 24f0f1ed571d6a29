"""Runs executed by a Prefect deployment's worker, followed through the Prefect API.

`Experiment(name).submit(job, deployment="submit-training/default")` creates a flow run of the
deployment (named after the tfsubmit run id, tagged with the experiment) and returns a
`DeploymentRun` at once. Status, logs and metrics then come from the API, so the submitting
machine need not be the worker's.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from tfsubmit.errors import TfsubmitError
from tfsubmit.experiment import POLL_SECONDS, BaseRun
from tfsubmit.prefect_api import PrefectAPI, api_url, artifact_key, status_of
from tfsubmit.spec import TrainingJob
from tfsubmit.workspace import TERMINAL_STATUSES, Workspace

# After the flow run has ended, its process still sends its last queued log lines.
LAST_LOGS_SECONDS = 15.0
# Log lines reach the API in batches, not always in time order: re-read this far back.
LOG_WINDOW_SECONDS = 30.0


def submit_to_deployment(job: TrainingJob, deployment: str, *, experiment: str,
                         workspace: Workspace) -> DeploymentRun:
    url = api_url(workspace)
    api = PrefectAPI(url)
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


class DeploymentRun(BaseRun):
    """A run whose flow a deployment's worker executes: read through the Prefect API."""

    def __init__(self, run_id: str, flow_run_id: str, api: PrefectAPI) -> None:
        self.id = run_id
        self.flow_run_id = str(flow_run_id)
        self.api = api

    def __repr__(self) -> str:
        return f"DeploymentRun(id={self.id!r}, status={self.get_status()!r})"

    @classmethod
    def find(cls, run_id: str, api: PrefectAPI) -> DeploymentRun | None:
        """The flow run named `run_id`, if the API has one."""
        runs = api.flow_runs(name=run_id, limit=1)
        return cls(run_id, runs[0]["id"], api) if runs else None

    def where(self) -> str:
        return f"the flow run {self.api.flow_run_link(self.flow_run_id)}"

    # -- state ----------------------------------------------------------------------------------

    def get_details(self) -> dict[str, Any]:
        flow_run = self.api.flow_run(self.flow_run_id)
        state = flow_run.get("state") or {}
        status = status_of(flow_run)
        parameters = flow_run.get("parameters") or {}
        return {
            "id": self.id,
            "status": status,
            "state": state.get("name"),
            "error": state.get("message") if status in ("Failed", "Canceled") else None,
            "experiment": parameters.get("experiment"),
            "tags": flow_run.get("tags", []),
            "flow_run_id": self.flow_run_id,
            "deployment_id": flow_run.get("deployment_id"),
            "prefect_api_url": self.api.url,
            "prefect_ui": self.api.flow_run_link(self.flow_run_id),
            "created": flow_run.get("created"),
            "started": flow_run.get("start_time"),
            "finished": flow_run.get("end_time"),
            "duration": flow_run.get("total_run_time") or 0.0,
        }

    @property
    def experiment(self) -> str:
        return self.get_details().get("experiment") or "default"

    @property
    def job(self) -> dict[str, Any] | str:
        return (self.api.flow_run(self.flow_run_id).get("parameters") or {}).get("job", {})

    @property
    def script_params(self) -> Any:
        job = self.job
        return job.get("script_params") if isinstance(job, dict) else None

    def get_metrics(self) -> dict[str, list[float]]:
        """Every metric the job logged, from the run's `metrics` table artifact (kept
        current while the job runs on a local target; SSH targets' come at the end)."""
        found = self.api.artifacts(flow_run_id=self.flow_run_id,
                                   key=artifact_key(self.id, "metrics"))
        if not found:
            return {}
        rows = found[0]["data"]
        rows = json.loads(rows) if isinstance(rows, str) else rows
        return {row["metric"]: [float(v) for v in row["values"]] for row in rows}

    def get_artifacts(self) -> list[dict[str, Any]]:
        """The flow run's artifacts (metrics, progress, summary, outputs link), newest first."""
        return self.api.artifacts(flow_run_id=self.flow_run_id)

    # -- logs -----------------------------------------------------------------------------------

    def stream_logs(self, *, follow: bool = True) -> Iterator[str]:
        """The flow run's log lines from the API, in time order; with follow, until it ends."""
        seen: set[str] = set()
        newest: list[str] = []
        ended_at = None
        while True:
            new = self._new_logs(seen, newest)
            for log in new:
                yield from log["message"].splitlines()
            finished = any(log["message"].startswith("Finished in state") and
                           not log.get("task_run_id") for log in new)
            if not follow or finished:
                return
            if ended_at is None and self.get_status() in TERMINAL_STATUSES:
                ended_at = time.monotonic()
            if ended_at is not None and time.monotonic() - ended_at > LAST_LOGS_SECONDS:
                return
            time.sleep(POLL_SECONDS * 5)

    def _new_logs(self, seen: set[str], newest: list[str]) -> list[dict[str, Any]]:
        """Lines not yet seen; re-reads a window before the newest seen, since batches from
        the flow's tasks can land out of time order."""
        after = None
        if newest:
            stamp = datetime.fromisoformat(newest[0].replace("Z", "+00:00"))
            after = (stamp - timedelta(seconds=LOG_WINDOW_SECONDS)).isoformat()
        logs, offset = [], 0
        while True:
            page = self.api.logs(self.flow_run_id, after=after, offset=offset)
            logs += [log for log in page if log["id"] not in seen]
            if len(page) < 200:
                break
            offset += len(page)
        seen.update(log["id"] for log in logs)
        logs.sort(key=lambda log: log["timestamp"])
        if logs:
            newest[:] = [max([logs[-1]["timestamp"], *newest])]
        return logs

    # -- cancel ---------------------------------------------------------------------------------

    def cancel(self, *, timeout: float = 60.0) -> None:
        """Ask Prefect to cancel the flow run; the flow stops the job's processes and the
        worker ends the flow run's process. Waits until the run has ended."""
        if self.get_status() in TERMINAL_STATUSES:
            return
        self.api.set_state(self.flow_run_id, "CANCELLING", "canceled by the user")
        deadline = time.monotonic() + timeout
        while self.get_status() not in TERMINAL_STATUSES:
            if time.monotonic() > deadline:
                raise TfsubmitError(f"run {self.id} did not stop within {timeout:.0f} s of the "
                                    "cancel; is its worker running?")
            time.sleep(POLL_SECONDS * 5)
