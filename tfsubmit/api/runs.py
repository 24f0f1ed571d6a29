"""Runs as users see them: one interface (BaseRun), three places a run's state lives.

    Run            a run in this workspace: its folder and record (any process can follow,
                   list or cancel it)
    SweepRun       a sweep: a Run whose trials are runs of the same experiment
    DeploymentRun  a flow run a Prefect deployment's worker executes, read through the API

Reading a run changes nothing while a process is responsible for it (its runner lock is
held). A run nobody holds and that has not ended lost its runner: the reader hands it to the
reaper (pipeline/reap.py), which takes the lock, stops what is left of it and ends it Failed.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tfsubmit.errors import RunFailedError, RunNotFoundError, TfsubmitError
from tfsubmit.pipeline.reap import reap
from tfsubmit.runtime.context import Run as InJobRun
from tfsubmit.runtime.metrics import (
    IMAGES_DIR,
    KIND_PROPERTY,
    KIND_TAG,
    azure_metrics,
    labels,
    read_records,
    tasks_of,
)
from tfsubmit.service.handover import hand_over
from tfsubmit.service.prefect_api import PrefectAPI, artifact_key, flow_run_link, status_of
from tfsubmit.service.server import api_url
from tfsubmit.store import runlock
from tfsubmit.store.cancel import folder_gone, request_cancel, withdraw_cancel
from tfsubmit.store.layout import RunPaths, Workspace, read_json, write_json
from tfsubmit.store.record import CANCELED, QUEUED, TERMINAL_STATUSES, RunRecord
from tfsubmit.store.registry import ModelRegistry
from tfsubmit.system.processes import kill_pids, pid_alive, still_running

POLL_SECONDS = 0.2

# After the flow run has ended, its process still sends its last queued log lines.
LAST_LOGS_SECONDS = 15.0
# Log lines reach the API in batches, not always in time order: re-read this far back.
LOG_WINDOW_SECONDS = 30.0


class BaseRun:
    """What every kind of run offers, with Azure ML v1's names and meanings; subclasses
    read their state from somewhere (`_record`, `_metric_records`, `_files`)."""

    id: str

    # Inside a job, Azure ML v1's `Run.get_context()`: the run's in-script context.
    get_context = staticmethod(InJobRun.get_context)

    # -- what subclasses provide -----------------------------------------------------------------

    def _record(self) -> dict[str, Any]:
        """tfsubmit's own facts of the run (status, error as a sentence, times as epochs)."""
        raise NotImplementedError

    def _metric_records(self) -> list[dict[str, Any]]:
        """The lines the job's processes logged (runtime.metrics.read_records)."""
        raise NotImplementedError

    def _folder(self) -> Path:
        """The run's folder on this machine (its files), or a TfsubmitError saying where."""
        raise NotImplementedError

    def get_portal_url(self) -> str | None:
        """The run's page in the Prefect UI, from the server answering now (None: no server)."""
        raise NotImplementedError

    def stream_logs(self, *, follow: bool = True, until: float | None = None
                    ) -> Iterator[str]:
        """Lines of the run's log; with follow, until the run ends, or until the
        time.monotonic() `until`, whichever comes first."""
        raise NotImplementedError

    def where(self) -> str:
        """Where the run's logs and outputs are kept, for error messages."""
        raise NotImplementedError

    # -- state ------------------------------------------------------------------------------------

    def get_status(self) -> str:
        return self._record().get("status", "Queued")

    def get_details(self) -> dict[str, Any]:
        """Azure ML v1's details (runId, target, status, startTimeUtc, endTimeUtc in ISO 8601,
        properties, tags, logFiles, error: {"error": {code, message, task, exception...}}),
        beside tfsubmit's own facts (reason: the error as a sentence; exit codes, timings,
        hashes, the Prefect flow run id)."""
        records = self._metric_records()  # once: tags and properties both come from them
        return azure_details(self._record(), portal=self.get_portal_url,
                             log_files=self._log_files,
                             tags=lambda: self._labels("tags", KIND_TAG, records),
                             properties=lambda: self._labels("properties", KIND_PROPERTY,
                                                             records))

    def _log_files(self) -> dict[str, str]:
        try:
            folder = self._folder()
        except TfsubmitError:
            return {}
        return {name: str(folder / name) for name in self.get_file_names()
                if name == "output.log" or name.startswith("logs/")}

    # -- metrics, tags, properties ---------------------------------------------------------------

    def get_metrics(self, name: str | None = None, *, task: str | None = None) -> dict[str, Any]:
        """Metrics as Azure ML v1 gives them: a metric logged once is its value, logged
        repeatedly (or by log_list) the list of values; rows and tables {column: [values]};
        an image the name of its file. A distributed run's are its chief's (else worker 0's,
        else rank 0's); `task="worker:1"` gives another task's; `name` just that metric."""
        metrics = azure_metrics(self._metric_records(), task)
        if name is not None:
            return {name: metrics[name]} if name in metrics else {}
        return metrics

    def get_metric_tasks(self) -> list[str]:
        """The tasks that logged metrics, the one get_metrics() reads first."""
        return tasks_of(self._metric_records())

    def get_tags(self) -> dict[str, str]:
        """Tags set by the job (run.tag inside it) and by callers (tag() here); later wins."""
        return self._labels("tags", KIND_TAG, self._metric_records())

    def get_properties(self) -> dict[str, str]:
        """Properties set by the job (add_properties inside it) and by callers."""
        return self._labels("properties", KIND_PROPERTY, self._metric_records())

    def _labels(self, kind: str, in_job: str, records: list[dict[str, Any]]) -> dict[str, str]:
        return {**labels(records, in_job), **self._own_labels(kind)}

    def tag(self, key: str, value: Any = None) -> None:
        """Tag the run (value None: a tag without a value)."""
        self.set_tags({key: value})

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._set_own_labels("tags", {k: "" if v is None else str(v) for k, v in tags.items()})

    def add_properties(self, properties: dict[str, Any]) -> None:
        """Add properties; as in Azure ML, a property once set cannot change."""
        have = self.get_properties()
        given = {str(key): str(value) for key, value in properties.items()}
        for key, text in given.items():
            if key in have and have[key] != text:
                raise TfsubmitError(f"property {key!r} of run {self.id} is already "
                                    f"{have[key]!r}; properties cannot change (use a tag)")
        self._set_own_labels("properties", given)

    def _own_labels(self, kind: str) -> dict[str, str]:
        try:
            return read_json(self._folder() / f"{kind}.json") or {}
        except TfsubmitError:
            return {}

    def _set_own_labels(self, kind: str, values: dict[str, str]) -> None:
        path = self._folder() / f"{kind}.json"
        write_json(path, {**(read_json(path) or {}), **values})

    # -- files ------------------------------------------------------------------------------------

    def get_file_names(self) -> list[str]:
        """Files of the run, relative to its folder: outputs/..., logs/..., images/...,
        output.log, metrics.jsonl."""
        folder = self._folder()
        names = []
        for sub in FILE_FOLDERS:
            names += [str(p.relative_to(folder)) for p in (folder / sub).rglob("*")
                      if p.is_file()]
        names += [name for name in FILES if (folder / name).is_file()]
        return sorted(names)

    def download_file(self, name: str, output_file_path: str | Path | None = None) -> Path:
        """Copy one file of the run (a name get_file_names() gives) to output_file_path
        (default: its base name here; a folder: into it)."""
        if name not in self.get_file_names():
            raise TfsubmitError(f"run {self.id} has no file {name!r}; see get_file_names()")
        target = Path(output_file_path or Path(name).name)
        if target.is_dir():
            target = target / Path(name).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(self._folder() / name, target)
        return target

    def download_files(self, prefix: str | None = None,
                       output_directory: str | Path = ".") -> list[Path]:
        """Copy the run's files (all by default; those whose names start with `prefix`),
        keeping their relative paths under output_directory."""
        copied = []
        folder = self._folder()
        for name in self.get_file_names():
            if prefix and not name.startswith(prefix):
                continue
            target = Path(output_directory) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(folder / name, target)
            copied.append(target)
        return copied

    def get_children(self) -> list[BaseRun]:
        """Child runs (a sweep's trials); a single run has none."""
        return []

    # -- waiting ----------------------------------------------------------------------------------

    def wait_for_completion(
        self,
        show_output: bool = False,
        *,
        timeout: float | None = None,
        raise_on_error: bool = True,
    ) -> dict[str, Any]:
        """Block until the run ends; with show_output, print its tagged log lines live.
        Returns get_details().

        Raises RunFailedError for a Failed or Canceled run unless raise_on_error is False,
        and TimeoutError when `timeout` seconds pass first (the run keeps going).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if show_output:
            for line in self.stream_logs(follow=True, until=deadline):
                print(printable(line), flush=True)
        while self.get_status() not in TERMINAL_STATUSES:
            if deadline and time.monotonic() > deadline:
                if self._record().get("outcome") is None or time.monotonic() > deadline + \
                        SETTLING_SECONDS:
                    raise TimeoutError(
                        f"run {self.id} still {self.get_status()} after {timeout} s")
                # Its outcome is settled; it is publishing its artifacts: the true end is
                # a moment away, so say that, not a timeout.
            time.sleep(POLL_SECONDS)
        details = self.get_details()
        if raise_on_error and details["status"] != "Completed":
            raise RunFailedError(
                f"run {self.id} {details['status']}: {details.get('reason') or 'no reason given'}"
                f" (logs kept in {self.where()})",
                run_id=self.id,
                status=details["status"],
            )
        return details


# How long past its timeout wait_for_completion waits for a run whose outcome is settled
# (it is publishing its artifacts) to end, instead of raising TimeoutError.
SETTLING_SECONDS = 30.0

# A job's terminal control codes (colors, cursor moves, a title change) are shown, not
# obeyed, where its lines are printed; tabs stay.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def printable(line: str) -> str:
    """A log line as it may go to a terminal: what a carriage return would leave shown (a
    progress bar's last state), other control codes escaped (\\x1b)."""
    line = line.rstrip("\r").rsplit("\r", 1)[-1]
    return _CONTROL.sub(lambda match: f"\\x{ord(match[0]):02x}", line)


# The run folder's files get_file_names() lists: these folders' and these files.
FILE_FOLDERS = ("outputs", "logs", IMAGES_DIR)
FILES = ("output.log", "metrics.jsonl")


def _iso(stamp: Any) -> str | None:
    """An epoch (or Prefect's ISO text) as ISO 8601 UTC, as Azure ML writes times."""
    if stamp in (None, ""):
        return None
    if isinstance(stamp, str):
        try:
            stamp = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return stamp
    return datetime.fromtimestamp(float(stamp), UTC).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def azure_details(record: dict[str, Any], *, portal, log_files, tags, properties
                  ) -> dict[str, Any]:
    """tfsubmit's record with Azure ML v1's keys added; `error` becomes Azure's shape and
    the sentence moves to `reason`."""
    details = dict(record)
    reason = details.pop("error", None)
    raised = details.get("script_error")
    status = details.get("status", "Queued")
    error = None
    if reason and status in ("Failed", "Canceled"):
        inner: dict[str, Any] = {
            "code": "UserError" if raised or " failed with " in reason else "SystemError",
            "message": reason,
        }
        if raised:
            inner.update(task=raised["task"], exceptionType=raised["type"],
                         exceptionMessage=raised["message"], traceback=raised["traceback"])
        error = {"error": inner, "time": _iso(details.get("finished")),
                 **({"traceback": raised["traceback"]} if raised else {})}
    details.update(
        runId=details.get("id"),
        target=details.get("compute_target"),
        status=status,
        startTimeUtc=_iso(details.get("started")),
        endTimeUtc=_iso(details.get("finished")) if status in TERMINAL_STATUSES else None,
        submittedTimeUtc=_iso(details.get("created")),
        properties=properties(),
        tags=tags(),
        logFiles=log_files(),
        portalUrl=portal(),
        reason=reason,
        error=error,
    )
    return details


class Run(BaseRun):
    """One submission: status, logs, metrics, files, cancel."""

    def __init__(self, run_id: str, *, workspace: str | Path | None = None) -> None:
        self.workspace = Workspace(workspace)
        self.paths: RunPaths = self.workspace.run_paths(run_id)
        self.record = RunRecord(self.paths)
        self.id = run_id

    def __repr__(self) -> str:
        return f"Run(id={self.id!r}, status={self.get_status()!r})"

    # -- state ----------------------------------------------------------------------------------

    def _record(self) -> dict[str, Any]:
        """The run record; a run whose runner died is reaped here."""
        if not self.paths.root.exists():
            raise RunNotFoundError(f"run {self.id}: {folder_gone(self.paths.root)} (its "
                                   "flow run says so in Prefect)")
        record = self.record.read()
        if record.get("status") in TERMINAL_STATUSES or self._runner_alive():
            return record
        if record.get("status") == QUEUED:  # its flow run waits for the workspace's worker
            return self._queued(record)
        # Nobody is responsible for the run: its runner died. The reaper ends it (and stops
        # what is left of it); should a runner have just ended it, the record says so.
        reaped = reap(self.workspace, self.paths, find_block=block_finder(self.workspace))
        return reaped.record if reaped else self.record.read()

    def _queued(self, record: dict[str, Any]) -> dict[str, Any]:
        """A Queued run stays Queued while its flow run waits; one whose flow run ended in
        Prefect before it started (canceled there, say) ends the same way."""
        flow_run_id, url = record.get("flow_run_id"), api_url(self.workspace, start=False)
        if not (flow_run_id and url):
            return record
        api = PrefectAPI(url, timeout=5)
        try:
            flow_run = api.flow_run(flow_run_id)
        except TfsubmitError:
            return record  # the API is down: the run waits with it
        finally:
            api.close()
        status = status_of(flow_run)
        if status not in TERMINAL_STATUSES:
            return record
        return self._end_queued(status, "its flow run ended in Prefect before it started: "
                                + ((flow_run.get("state") or {}).get("message") or status))

    def _end_queued(self, status: str, reason: str) -> dict[str, Any]:
        lock_fd = runlock.acquire(self.paths.runner_lock)
        if lock_fd is None:  # its flow run has just taken it
            return self.record.read()
        record = RunRecord(self.paths, lock_fd)
        try:
            if record.read().get("status") != QUEUED:
                return record.read()
            return record.canceled(reason) if status == CANCELED else record.failed(reason)
        finally:
            record.release_lock()

    def _metric_records(self) -> list[dict[str, Any]]:
        return read_records(self.paths.metric_files())

    def _folder(self) -> Path:
        return self.paths.root

    def where(self) -> str:
        return str(self.paths.root)

    def get_portal_url(self) -> str | None:
        flow_run = self.record.read().get("flow_run_id")
        if not flow_run:
            return None
        url = api_url(self.workspace, start=False)
        return flow_run_link(url, flow_run) if url else None

    def get_artifacts(self) -> list[dict[str, Any]]:
        """The run's Prefect artifacts (metrics, progress, summary, outputs, images)."""
        flow_run = self.record.read().get("flow_run_id")
        url = api_url(self.workspace, start=False)
        if not (flow_run and url):
            return []
        api = PrefectAPI(url)
        try:
            return api.artifacts(flow_run_id=flow_run)
        finally:
            api.close()

    def register_model(self, model_name: str, model_path: str = "outputs", *,
                       tags: dict[str, Any] | None = None,
                       properties: dict[str, Any] | None = None,
                       description: str = "", **ignored: Any) -> dict[str, Any]:
        """Register a file or folder of this run (`model_path`, relative to the run's
        folder, as get_file_names() names them: outputs/model) as the next version of
        `model_name` in the workspace's registry; returns its model.json. Azure ML's other
        arguments (model_framework, datasets, ...) are accepted and not used."""
        if self.get_status() not in TERMINAL_STATUSES:
            raise TfsubmitError(f"run {self.id} is {self.get_status()}: register its model "
                                "once it has ended (wait_for_completion())")
        root = self.paths.root.resolve()
        source = (root / model_path).resolve()
        if not source.is_relative_to(root):
            raise TfsubmitError(f"model_path {model_path!r} is outside run {self.id}'s "
                                "folder; give a path get_file_names() lists, e.g. outputs/model")
        if not source.exists():
            near = sorted({n.split("/")[0] + "/" + n.split("/")[1] for n in
                           self.get_file_names() if n.startswith("outputs/") and
                           n.count("/") >= 1})[:8]
            raise TfsubmitError(f"run {self.id} has no {model_path!r}; its outputs: "
                                f"{', '.join(near) or 'none'}")
        return ModelRegistry(self.workspace).register(
            model_name, source, run_id=self.id, tags=tags, properties=properties,
            description=description,
            extra={"experiment": self.record.read().get("experiment", "default"),
                   "job": self._model_job()})

    def _model_job(self) -> dict[str, Any]:
        """What serving the model needs to know of the job that trained it."""
        job = self.job
        return {key: job[key] for key in ("framework_version", "pip_packages", "use_gpu",
                                          "conda_packages") if key in job}

    @property
    def experiment(self) -> str:
        return self.record.read().get("experiment", "default")

    @property
    def job(self) -> dict[str, Any]:
        return read_json(self.paths.job) or {}

    @property
    def script_params(self) -> Any:
        return self.job.get("script_params")

    def _runner_pid(self) -> int | None:
        try:
            return int(self.paths.runner_pid.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def _runner_alive(self) -> bool:
        return self.record.runner_alive()

    # -- logs -----------------------------------------------------------------------------------

    def stream_logs(self, *, follow: bool = True, until: float | None = None
                    ) -> Iterator[str]:
        """Lines of the merged log; with follow, keep reading until the run ends (or until
        the time.monotonic() `until`)."""
        with self.paths.output_log.open("r", errors="replace") as handle:
            pending = ""
            while True:
                chunk = handle.read()
                if chunk:
                    pending += chunk
                    *complete, pending = pending.split("\n")
                    yield from complete
                    continue
                if until is not None and time.monotonic() > until:
                    return
                if not follow or self.get_status() in TERMINAL_STATUSES:
                    rest = handle.read()  # written between the last read and the status check
                    pending += rest
                    yield from (line for line in pending.split("\n") if line)
                    return
                time.sleep(POLL_SECONDS)

    # -- cancel ---------------------------------------------------------------------------------

    def cancel(self, *, timeout: float = 60.0) -> None:
        """Stop the run: every process of it, on every host, is terminated (TERM, grace,
        KILL) and checked gone, even of a run already marked ended; logs and outputs stay."""
        facts = self.record.read()
        if facts.get("status") == QUEUED and not self._runner_alive():
            self._cancel_queued(facts)
        if self.get_status() not in TERMINAL_STATUSES:
            request_cancel(self.paths)
            deadline = time.monotonic() + timeout
            while self.get_status() not in TERMINAL_STATUSES and time.monotonic() < deadline:
                time.sleep(POLL_SECONDS)
        # Its runner ends the run, then exits (letting go of the run's lock): wait for that,
        # and take over from a runner that does not stop in time.
        alive = lambda: [True] if self._runner_alive() else []  # noqa: E731
        if still_running(alive, seconds=RUNNER_EXIT_SECONDS):
            runner = self.record.read().get("runner_pid") or self._runner_pid()
            if runner and pid_alive(runner):
                kill_pids([runner])
            still_running(alive, seconds=10.0)
        reaped = reap(self.workspace, self.paths, status="Canceled",
                      reason="canceled by the user; its runner did not stop in time",
                      find_block=block_finder(self.workspace))
        if reaped is None:
            raise TfsubmitError(f"run {self.id}: its runner is still alive after being killed")
        if reaped.survivors:
            shown = ", ".join(f"{pid}@{host}" for host, pid in reaped.survivors)
            raise TfsubmitError(f"run {self.id}: processes {shown} survived SIGKILL")

    def _cancel_queued(self, facts: dict[str, Any]) -> None:
        """A run whose flow run has not started: it ends Canceled here, and its flow run is
        canceled in Prefect (one that starts meanwhile finds the run ended and leaves it)."""
        self._end_queued(CANCELED, "canceled by the user before it started")
        url = api_url(self.workspace, start=False)
        if facts.get("flow_run_id") and url:
            api = PrefectAPI(url, timeout=10)
            try:
                api.cancel(facts["flow_run_id"], "canceled by the user before it started")
            except TfsubmitError:
                pass  # the flow run, if it starts, finds its run ended
            finally:
                api.close()


class SweepRun(Run):
    """A hyperparameter sweep: its trials are runs of the same experiment."""

    def get_trials(self) -> list[dict[str, Any]]:
        """Every trial so far, best first: trial, run_id, params, status, value, error,
        duration. Status is Completed, EarlyTerminated, Failed, Canceled or Running."""
        return self._record().get("trials", [])

    def get_children(self) -> list[Run]:
        """The trials' runs, in trial order."""
        rows = sorted(self.get_trials(), key=lambda row: row["trial"])
        return [Run(row["run_id"], workspace=self.workspace.root) for row in rows]

    def get_best_run(self) -> Run | None:
        """The completed trial with the best primary metric (None if none completed)."""
        best = self._record().get("best_trial")
        return Run(best, workspace=self.workspace.root) if best else None

    def resume(self) -> SweepRun:
        """Continue an interrupted (Failed or Canceled) sweep: trials already done are kept,
        trials cut off are run again, and new ones are drawn up to the total."""
        details = self._record()
        if details["status"] not in ("Failed", "Canceled"):
            raise TfsubmitError(f"sweep {self.id} is {details['status']}; only a Failed or "
                                "Canceled sweep can be resumed")
        lock_fd = runlock.acquire(self.paths.runner_lock)
        if lock_fd is None:
            raise TfsubmitError(f"sweep {self.id} still has a live runner; cancel it first")
        withdraw_cancel(self.paths)
        record = RunRecord(self.paths, lock_fd)
        record.requeued(resumed=time.time())
        hand_over(self.workspace, record, {}, flow="sweep")
        return self


class DeploymentRun(BaseRun):
    """A run whose flow a deployment's worker executes: read through the Prefect API."""

    def __init__(self, run_id: str, flow_run_id: str, api: PrefectAPI) -> None:
        self.id = run_id
        self.flow_run_id = str(flow_run_id)
        self.api = api
        self._found_folder: Path | None = None

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

    def _record(self) -> dict[str, Any]:
        flow_run = self.api.flow_run(self.flow_run_id)
        state = flow_run.get("state") or {}
        status = status_of(flow_run)
        parameters = flow_run.get("parameters") or {}
        job = parameters.get("job") if isinstance(parameters.get("job"), dict) else {}
        return {
            "id": self.id,
            "status": status,
            "state": state.get("name"),
            "error": state.get("message") if status in ("Failed", "Canceled") else None,
            "experiment": parameters.get("experiment"),
            "compute_target": job.get("compute_target"),
            "prefect_tags": flow_run.get("tags", []),
            "flow_run_id": self.flow_run_id,
            "deployment_id": flow_run.get("deployment_id"),
            "prefect_api_url": self.api.url,
            "prefect_ui": self.api.flow_run_link(self.flow_run_id),
            "created": flow_run.get("created"),
            "started": flow_run.get("start_time"),
            "finished": flow_run.get("end_time"),
            "duration": flow_run.get("total_run_time") or 0.0,
        }

    def get_portal_url(self) -> str | None:
        return self.api.flow_run_link(self.flow_run_id)

    def _folder(self) -> Path:
        """The run folder on the machine that ran its flow (named by its `outputs`
        artifact); readable when that is this machine. Found once: it never moves."""
        if self._found_folder is not None:
            return self._found_folder
        found = self.api.artifacts(flow_run_id=self.flow_run_id,
                                   key=artifact_key(self.id, "outputs"))
        if not found:
            raise TfsubmitError(f"run {self.id} has no files yet: its outputs are collected "
                                "when it ends")
        named = re.search(r"Run folder: `([^`]+)`", found[0]["data"])
        if named:
            folder = Path(named[1])
        else:  # before issue 28: a link artifact, "[text](file:///.../outputs)"
            link = re.search(r"\]\(([^)]+)\)\s*$", found[0]["data"])
            url = link[1] if link else found[0]["data"]
            folder = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).parent
        if not (folder / "run.json").is_file():
            raise TfsubmitError(f"run {self.id}'s files are on the machine that ran its flow, "
                                f"in {folder}; read them there (tfsubmit show {self.id})")
        self._found_folder = folder
        return folder

    def _metric_records(self) -> list[dict[str, Any]]:
        """From the run folder once it ended on this machine; else from the run's `metrics`
        table artifact (kept current while the job runs on a local target)."""
        try:
            folder = self._folder()
        except TfsubmitError:
            folder = None
        if folder is not None and (folder / "metrics.jsonl").is_file():
            return read_records([folder / "metrics.jsonl"])
        found = self.api.artifacts(flow_run_id=self.flow_run_id,
                                   key=artifact_key(self.id, "metrics"))
        if not found:
            return []
        rows = found[0]["data"]
        rows = json.loads(rows) if isinstance(rows, str) else rows
        return [{"name": row["metric"], "value": value, "task": row.get("task", "worker:0")}
                for row in rows for value in row["values"]]

    @property
    def experiment(self) -> str:
        return self._record().get("experiment") or "default"

    @property
    def job(self) -> dict[str, Any] | str:
        return (self.api.flow_run(self.flow_run_id).get("parameters") or {}).get("job", {})

    @property
    def script_params(self) -> Any:
        job = self.job
        return job.get("script_params") if isinstance(job, dict) else None

    def get_artifacts(self) -> list[dict[str, Any]]:
        """The flow run's artifacts (metrics, progress, summary, outputs link), newest first."""
        return self.api.artifacts(flow_run_id=self.flow_run_id)

    # -- logs -----------------------------------------------------------------------------------

    def stream_logs(self, *, follow: bool = True, until: float | None = None
                    ) -> Iterator[str]:
        """The flow run's log lines from the API, in time order; with follow, until it ends
        (or until the time.monotonic() `until`)."""
        seen: set[str] = set()
        newest: list[str] = []
        ended_at = None
        while True:
            new = self._new_logs(seen, newest)
            for log in new:
                yield from log["message"].splitlines()
            finished = any(log["message"].startswith("Finished in state") and
                           not log.get("task_run_id") for log in new)
            if not follow or finished or (until is not None and time.monotonic() > until):
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
        self.api.cancel(self.flow_run_id)
        deadline = time.monotonic() + timeout
        while self.get_status() not in TERMINAL_STATUSES:
            if time.monotonic() > deadline:
                raise TfsubmitError(f"run {self.id} did not stop within {timeout:.0f} s of the "
                                    "cancel; is its worker running?")
            time.sleep(POLL_SECONDS * 5)


# How long a canceled run's runner may take to end the run and exit before it is killed.
RUNNER_EXIT_SECONDS = 30.0


def block_finder(workspace: Workspace):
    """Finds a target saved as a Prefect Block (Prefect loads only when one is looked up)."""

    def find(name: str):
        from tfsubmit.tasks.blocks import load_block_target

        return load_block_target(name, api_url(workspace, start=False))

    return find


def run_of(run_id: str, *, workspace: str | Path | None = None) -> Run:
    """A run of the workspace, as a SweepRun when it is a sweep."""
    run = Run(run_id, workspace=workspace)
    if run.record.read().get("kind") == "sweep":
        return SweepRun(run_id, workspace=workspace)
    return run


def open_run(run_id: str, *, workspace: str | Path | None = None) -> BaseRun:
    """The run with this id (or a unique start of it, or `latest`): from the workspace, else
    a flow run of that name in the Prefect API (a run a deployment's worker executed
    elsewhere)."""
    try:
        return run_of(Workspace(workspace).resolve_run_id(run_id), workspace=workspace)
    except RunNotFoundError as missing:
        url = api_url(workspace, start=False)
        found = url and DeploymentRun.find(run_id, PrefectAPI(url))
        if not found:
            raise missing from None
        return found
