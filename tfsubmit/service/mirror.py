"""A run's Prefect view, kept by its runner over the REST API, in the background, batched.

A run submitted with `Experiment.submit` runs its steps directly (`pipeline/execute.py`);
this mirror shows it in Prefect as the `submit-training` flow run the flow would make: named
after the run, tagged with its experiment, one task run per step (named as the flow's
tasks), the log lines under the step that wrote them, the live and final artifacts, and the
final state taken from the run's record. A `submit-training` flow run through Prefect's
engine costs the server ~25 requests, ~20 events and a state poll every 2 s (for a cancel);
the mirror queues everything and one thread sends it about once a second, coalesced (a quick
step is one request, a second's log lines one request): about a dozen requests for a short
run, and the run never waits on them. A cancel from Prefect reaches the run through the
fork server, which asks the API for every Cancelling flow run of the workspace at once
(`forkserver.watch_prefect_cancels`); a runner without a fork server asks for its own.

The run does not depend on any of it: when the API stops answering the mirror stops, says
so in the run's log, and marks the record `prefect_pending`, so the flow run's final state
is caught up once the API answers again (the runner, then any reader: `pipeline/reap.py`).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from tfsubmit.errors import TfsubmitError
from tfsubmit.pipeline.artifacts import (
    METRICS_DESCRIPTION,
    images_markdown,
    metrics_table,
    outputs_link,
    progress,
)
from tfsubmit.pipeline.collect import summary_markdown
from tfsubmit.pipeline.context import RunCanceled
from tfsubmit.pipeline.execute import Steps
from tfsubmit.pipeline.reap import PREFECT_STATE
from tfsubmit.pipeline.supervise import Outcome
from tfsubmit.runtime.metrics import json_safe, series
from tfsubmit.service.prefect_api import PAGE, PrefectAPI, artifact_key
from tfsubmit.store.cancel import CANCELED_FROM_PREFECT, request_cancel
from tfsubmit.store.layout import RunPaths, Workspace, read_json, read_record
from tfsubmit.store.record import TERMINAL_STATUSES, RunRecord

T = TypeVar("T")

FLOW_NAME = "submit-training"
# Seconds between sends (and between looks for a cancel, without a fork server).
SEND_SECONDS = 1.0
CANCEL_POLL_SECONDS = 2.0
# Seconds between live updates of the metrics and progress artifacts.
ARTIFACT_SECONDS = 2.0


@dataclass
class _TaskRun:
    id: str
    name: str
    ended: float | None = None
    state: str = "RUNNING"
    message: str = ""
    created: bool = False  # sent to the API
    ended_sent: bool = False


@dataclass
class _Artifact:
    type: str
    data: Any
    description: str
    id: str | None = None
    dirty: bool = True


def _state(kind: str, message: str = "") -> dict[str, Any]:
    """A state to send; the API stamps its time (sending lags the run by a second at most)."""
    return {"type": kind, "message": message[:500]}


class PrefectMirror:
    """One run's flow run in Prefect, kept current from the runner (see the module)."""

    def __init__(self, paths: RunPaths, record: RunRecord, url: Callable[[], str | None], *,
                 say: Callable[[str], None], watch_cancel: bool) -> None:
        self.paths = paths
        self.record = record
        self.facts = record.read()
        self._url = url  # may wait for a server that is starting; None: there will be none
        self._say = say
        self._watch_cancel = watch_cancel
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._ending = threading.Event()
        self._tasks: list[_TaskRun] = []
        self._current: _TaskRun | None = None
        self._lines: list[tuple[float, str, str | None]] = []
        self._artifacts: dict[str, _Artifact] = {}
        self._final: dict[str, Any] | None = None
        self._live_at = 0.0
        self.flow_run_id: str | None = None
        self.lost: str | None = None
        self.unreported: str | None = None
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name="tfsubmit-prefect-mirror")

    def start(self) -> PrefectMirror:
        self._thread.start()
        return self

    # -- what the run tells it ------------------------------------------------------------------

    def steps(self, direct: Steps) -> Steps:
        """The pipeline's steps, each shown as a task run of its own."""
        return Steps(
            snapshot=lambda sub: self.task("snapshot_source", lambda: direct.snapshot(sub)),
            environment=lambda sub, target: self.task(
                "resolve_environment", lambda: direct.environment(sub, target)),
            provision=lambda sub, target, snap, env: self.task(
                "provision_nodes", lambda: direct.provision(sub, target, snap, env)),
            launch=lambda sub, target, nodes, env: self.task(
                "launch_topology", lambda: direct.launch(sub, target, nodes, env)),
        )

    def task(self, name: str, body: Callable[[], T]) -> T:
        with self.task_run(name):
            return body()

    @contextlib.contextmanager
    def task_run(self, name: str) -> Iterator[None]:
        """A task run for what runs inside; its state from how it ends."""
        task = _TaskRun(str(uuid.uuid4()), f"{name}-{uuid.uuid4().hex[:3]}")
        with self._lock:
            self._tasks.append(task)
            self._current = task
        self._wake.set()
        try:
            yield
        except RunCanceled as exc:
            self._end_task(task, "CANCELLED", str(exc))
            raise
        except BaseException as exc:
            self._end_task(task, "FAILED", f"{type(exc).__name__}: {exc}")
            raise
        else:
            self._end_task(task, "COMPLETED")

    def _end_task(self, task: _TaskRun, state: str, message: str = "") -> None:
        with self._lock:
            task.ended, task.state, task.message = time.time(), state, message
            if self._current is task:
                self._current = None
        self._wake.set()

    def line(self, text: str) -> None:
        """A line of the run's log (RunLog's forward), under the step that wrote it."""
        if self.lost is not None:
            return
        with self._lock:
            current = self._current.id if self._current is not None else None
            self._lines.append((time.time(), text, current))

    def metrics(self, records: list[dict]) -> None:
        """The job's metrics so far (every second while it runs): the live artifacts."""
        if self.lost is not None or time.monotonic() < self._live_at:
            return
        self._live_at = time.monotonic() + ARTIFACT_SECONDS
        self._set_metric_artifacts(records, final=False)

    def publish(self, records: list[dict], final: dict[str, Any], outcome: Outcome) -> None:
        """The final artifacts: metrics, progress, images, summary, outputs."""
        run_id = self.facts["id"]
        self._set_metric_artifacts(records, final=True)
        images = images_markdown(run_id, self.paths.root, records)
        if images is not None:
            self._artifact("images", "markdown", images, f"Images logged by run {run_id}")
        summary = summary_markdown({**self.record.read(), **final, "status": outcome.status},
                                   series(records))
        self._artifact("summary", "markdown", summary, f"Summary of run {run_id}")
        self._artifact("outputs", "markdown",
                       outputs_link(self.paths.outputs, len(final["outputs"])),
                       f"Outputs of run {run_id} (on the machine that ran its flow)")

    def _set_metric_artifacts(self, records: list[dict], *, final: bool) -> None:
        if not records:
            return
        run_id = self.facts["id"]
        self._artifact("metrics", "table", json.dumps(json_safe(metrics_table(records))),
                       METRICS_DESCRIPTION.format(run=run_id))
        shown = progress(series(records), final)
        if shown is not None:
            self._artifact("progress", "progress", shown[0], shown[1])

    def _artifact(self, suffix: str, kind: str, data: Any, description: str) -> None:
        key = artifact_key(self.facts["id"], suffix)
        with self._lock:
            known = self._artifacts.get(key)
            if known is None:
                self._artifacts[key] = _Artifact(kind, data, description)
            else:
                known.data, known.description, known.dirty = data, description, True
        self._wake.set()

    def finish(self, record: dict[str, Any], *, timeout: float = 30.0) -> bool:
        """The run's outcome is settled (`record`): its flow run ends in the same state.
        Waits up to `timeout` for everything to be sent; False when it was not (the API is
        gone, or slow): the record says `prefect_pending` for whoever catches up."""
        status = record.get("outcome") or record.get("status")
        kind = PREFECT_STATE.get(status, "FAILED")
        message = record.get("error") or ("training completed" if kind == "COMPLETED" else "")
        with self._lock:
            self._final = _state(kind, message)
        self._ending.set()
        self._wake.set()
        self._thread.join(timeout)
        done = not self._thread.is_alive() and self.lost is None and self.unreported is None
        if not done and self.unreported is None:
            self.record.note_if_room(prefect_pending=True)
        return done

    # -- the sending thread ---------------------------------------------------------------------

    def _loop(self) -> None:
        url = self._url()
        if url is None:
            self.unreported = "the embedded server did not come up"
            return
        api = PrefectAPI(url, timeout=30)
        next_look = time.monotonic() + CANCEL_POLL_SECONDS
        try:
            while True:
                ending = self._ending.is_set()
                if self.flow_run_id is None:
                    self._create_flow_run(api)
                self._send(api, ending=ending)
                if ending:
                    return
                if self._watch_cancel and time.monotonic() >= next_look:
                    next_look = time.monotonic() + CANCEL_POLL_SECONDS
                    self._look_for_cancel(api)
                self._wake.wait(SEND_SECONDS)
                self._wake.clear()
        except TfsubmitError as exc:
            self._lose(exc)
        finally:
            api.close()

    def _create_flow_run(self, api: PrefectAPI) -> None:
        facts = self.facts
        flow_run = api.record_flow_run(
            FLOW_NAME, name=facts["id"], tags=[facts.get("experiment") or "default"],
            parameters={"job": read_json(self.paths.job), "experiment": facts.get("experiment"),
                        "run_id": facts["id"], "workspace": facts.get("workspace")},
            state_type="RUNNING")
        self.flow_run_id = flow_run["id"]
        # Made while the job may be filling the disk: a view's facts never take the reserve.
        self.record.note_if_room(flow_run_id=self.flow_run_id, prefect_api_url=api.url)

    def _send(self, api: PrefectAPI, *, ending: bool) -> None:
        with self._lock:
            tasks = [t for t in self._tasks if not (t.created and t.ended_sent)]
            lines, self._lines = self._lines, []
            artifacts = [(key, a) for key, a in self._artifacts.items() if a.dirty]
            for _, artifact in artifacts:
                artifact.dirty = False
            final = self._final if ending else None
        for task in tasks:
            self._send_task(api, task)
        if lines:
            api.post_logs(self.flow_run_id, lines)
        for key, artifact in artifacts:
            self._send_artifact(api, key, artifact)
        if final is not None:
            api.set_state(self.flow_run_id, final["type"], final["message"])

    def _send_task(self, api: PrefectAPI, task: _TaskRun) -> None:
        ended, state = task.ended, task.state  # read once: the step may end meanwhile
        if not task.created:
            kind = state if ended is not None else "RUNNING"
            api.call("POST", "/task_runs/", {
                "id": task.id, "flow_run_id": self.flow_run_id, "name": task.name,
                "task_key": task.name.rsplit("-", 1)[0], "dynamic_key": task.name,
                "state": _state(kind, task.message)})
            task.created = True
            task.ended_sent = ended is not None
        elif ended is not None:
            api.call("POST", f"/task_runs/{task.id}/set_state",
                     {"state": _state(state, task.message), "force": True})
            task.ended_sent = True

    def _send_artifact(self, api: PrefectAPI, key: str, artifact: _Artifact) -> None:
        if artifact.id is None:
            made = api.call("POST", "/artifacts/", {
                "key": key, "type": artifact.type, "data": artifact.data,
                "description": artifact.description, "flow_run_id": self.flow_run_id})
            artifact.id = made["id"]
        else:
            api.call("PATCH", f"/artifacts/{artifact.id}",
                     {"data": artifact.data, "description": artifact.description})

    def _look_for_cancel(self, api: PrefectAPI) -> None:
        if api.cancel_asked(self.flow_run_id):
            request_cancel(self.paths, CANCELED_FROM_PREFECT)
            self._watch_cancel = False

    def _lose(self, exc: Exception) -> None:
        self.lost = f"{type(exc).__name__}: {exc}"
        self.record.note_if_room(prefect_pending=True)
        try:
            self._say(f"the Prefect API stopped answering ({self.lost}); the run goes on and "
                      "reports to it again once it answers")
        except OSError:
            pass  # a full disk: the record says prefect_pending where it has room


def watch_prefect_cancels(workspace: Workspace, url: str | None, *, timeout: float = 3.0
                          ) -> list[str]:
    """One look at the API for `submit-training` flow runs set Cancelling (the UI, `prefect
    flow-run cancel`) whose run is this workspace's and still going: each is asked to stop,
    as `Run.cancel()` does. For all the workspace's runs at once (the fork server calls it
    every CANCEL_POLL_SECONDS): the ids asked."""
    if url is None:
        return []
    api = PrefectAPI(url, timeout=timeout)
    try:
        found = api.call("POST", "/flow_runs/filter", {
            "flow_runs": {"state": {"type": {"any_": ["CANCELLING"]}}},
            "flows": {"name": {"any_": [FLOW_NAME]}}, "limit": PAGE})
    except TfsubmitError:
        return []  # the API is down or busy: the next look
    finally:
        api.close()
    asked = []
    for flow_run in found:
        try:
            paths = workspace.paths_of(flow_run.get("name") or "")
            facts = read_record(paths.record)
        except TfsubmitError:
            continue  # not a run of this workspace
        if facts.get("flow_run_id") != flow_run["id"] or facts.get("status") in TERMINAL_STATUSES \
                or paths.cancel_file.exists():
            continue
        request_cancel(paths, CANCELED_FROM_PREFECT)
        asked.append(paths.root.name)
    return asked
