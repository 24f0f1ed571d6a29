"""The user's face: `Experiment(name).submit(job) -> Run`.

Submitting prepares the run folder and starts a detached runner process that executes the
Prefect flow; the `Run` reads the run folder, so any process can follow, list or cancel it.
With `deployment=`, the job becomes a flow run of a Prefect deployment instead, executed by
that deployment's worker; the `DeploymentRun` returned reads everything through the API.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tfsubmit import forkserver
from tfsubmit.errors import RunFailedError, RunNotFoundError, TfsubmitError
from tfsubmit.procfs import pid_alive, processes_of_run
from tfsubmit.runtime import read_metrics
from tfsubmit.spec import TrainingJob, validate_experiment_name
from tfsubmit.tuning import Sweep
from tfsubmit.workspace import TERMINAL_STATUSES, RunPaths, Workspace, read_json, update_record

POLL_SECONDS = 0.2


class Experiment:
    """A named group of runs in a workspace."""

    def __init__(self, name: str = "default", *, workspace: str | Path | None = None) -> None:
        self.name = validate_experiment_name(name)
        self.workspace = Workspace(workspace)

    def submit(self, job: TrainingJob | Sweep, *, deployment: str | None = None) -> BaseRun:
        """Start `job` and return its Run at once; the job runs in a detached process.

        A `tfsubmit.tuning.Sweep` returns a SweepRun: its trials are runs of this experiment.

        With `deployment` ("FLOW/DEPLOYMENT", e.g. "submit-training/default"), create a flow
        run of that Prefect deployment instead; a worker of its pool runs it, and the
        returned run follows it through the Prefect API (PREFECT_API_URL, else the embedded
        server). The job's source_directory must exist where the worker runs.
        """
        if isinstance(job, Sweep):
            if deployment is not None:
                raise TfsubmitError("deployment: sweeps run on this machine's runner; submit "
                                    "the sweep without deployment=")
            return self._submit_sweep(job)
        if deployment is not None:
            from tfsubmit.deployment_run import submit_to_deployment

            return submit_to_deployment(job, deployment, experiment=self.name,
                                        workspace=self.workspace)
        from tfsubmit.targets import get_target

        # An unknown or unreachable target fails here, before a run exists.
        get_target(job.compute_target, self.workspace.root).close()
        run_id = self.workspace.new_run_id(self.name)
        paths = self.workspace.create_run(run_id, self.name, job.to_dict())
        self._start_runner(paths)
        return Run(run_id, workspace=self.workspace.root)

    def _submit_sweep(self, sweep: Sweep) -> SweepRun:
        from tfsubmit.targets import get_target

        get_target(sweep.estimator.compute_target, self.workspace.root).close()
        run_id = self.workspace.new_run_id(self.name)
        paths = self.workspace.create_run(run_id, self.name, sweep.to_dict())
        update_record(paths, kind="sweep", primary_metric=sweep.primary_metric,
                      goal=sweep.goal, total_runs=sweep.total_runs)
        self._start_runner(paths)
        return SweepRun(run_id, workspace=self.workspace.root)

    def _start_runner(self, paths: RunPaths) -> None:
        pid = forkserver.request_runner(self.workspace, paths.root) or self._spawn_runner(paths)
        (paths.root / "runner.pid").write_text(str(pid))

    def _spawn_runner(self, paths: RunPaths) -> int:
        """Start a runner from scratch (no warm fork server for this workspace and code)."""
        with paths.runner_log.open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "tfsubmit.runner", str(paths.root)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # the run outlives this process, like a cloud job
            )
        return process.pid

    def get_runs(self) -> list[Run]:
        return [
            (SweepRun if record.get("kind") == "sweep" else Run)(
                record["id"], workspace=self.workspace.root)
            for record in self.workspace.list_runs(self.name)
        ]


class BaseRun:
    """What every kind of run offers; subclasses read their state from somewhere."""

    id: str

    def get_details(self) -> dict[str, Any]:
        raise NotImplementedError

    def get_status(self) -> str:
        return self.get_details().get("status", "Queued")

    def stream_logs(self, *, follow: bool = True) -> Iterator[str]:
        raise NotImplementedError

    def where(self) -> str:
        """Where the run's logs and outputs are kept, for error messages."""
        raise NotImplementedError

    def wait_for_completion(
        self,
        show_output: bool = False,
        *,
        timeout: float | None = None,
        raise_on_error: bool = True,
    ) -> dict[str, Any]:
        """Block until the run ends; with show_output, print its tagged log lines live.

        Raises RunFailedError for a Failed or Canceled run unless raise_on_error is False,
        and TimeoutError when `timeout` seconds pass first (the run keeps going).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if show_output:
            for line in self.stream_logs(follow=True):
                print(line, flush=True)
                if deadline and time.monotonic() > deadline:
                    break
        while self.get_status() not in TERMINAL_STATUSES:
            if deadline and time.monotonic() > deadline:
                raise TimeoutError(f"run {self.id} still {self.get_status()} after {timeout} s")
            time.sleep(POLL_SECONDS)
        details = self.get_details()
        if raise_on_error and details["status"] != "Completed":
            raise RunFailedError(
                f"run {self.id} {details['status']}: {details.get('error') or 'no reason given'}"
                f" (logs kept in {self.where()})",
                run_id=self.id,
                status=details["status"],
            )
        return details


class Run(BaseRun):
    """One submission: status, logs, metrics, files, cancel."""

    def __init__(self, run_id: str, *, workspace: str | Path | None = None) -> None:
        self.workspace = Workspace(workspace)
        self.paths: RunPaths = self.workspace.run_paths(run_id)
        self.id = run_id

    def __repr__(self) -> str:
        return f"Run(id={self.id!r}, status={self.get_status()!r})"

    # -- state ----------------------------------------------------------------------------------

    def get_details(self) -> dict[str, Any]:
        """The run record: status, error, exit codes, timings, hashes, Prefect flow run id."""
        record = read_json(self.paths.record) or {}
        if record.get("status") not in TERMINAL_STATUSES and not self._runner_alive():
            # The runner is gone without writing an end: say so instead of "Running" forever.
            time.sleep(0.2)  # it may have written its last record just now
            record = read_json(self.paths.record) or {}
            if record.get("status") not in TERMINAL_STATUSES:
                record = update_record(
                    self.paths,
                    status="Failed",
                    error="the run's runner process died; see runner.log in the run folder",
                    finished=time.time(),
                )
        return record

    def where(self) -> str:
        return str(self.paths.root)

    @property
    def experiment(self) -> str:
        return self.get_details().get("experiment", "default")

    @property
    def job(self) -> dict[str, Any]:
        return read_json(self.paths.job) or {}

    @property
    def script_params(self) -> Any:
        return self.job.get("script_params")

    def get_metrics(self) -> dict[str, list[float]]:
        """Every metric the job logged: {name: [values in order]}; live while it runs."""
        return read_metrics(self.paths.metric_files())

    def _runner_pid(self) -> int | None:
        try:
            return int((self.paths.root / "runner.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def _runner_alive(self) -> bool:
        pid = self._runner_pid()
        return pid is not None and pid_alive(pid)

    # -- logs -----------------------------------------------------------------------------------

    def stream_logs(self, *, follow: bool = True) -> Iterator[str]:
        """Lines of the merged log; with follow, keep reading until the run ends."""
        with self.paths.output_log.open("r", errors="replace") as handle:
            pending = ""
            while True:
                chunk = handle.read()
                if chunk:
                    pending += chunk
                    *complete, pending = pending.split("\n")
                    yield from complete
                    continue
                if not follow or self.get_status() in TERMINAL_STATUSES:
                    rest = handle.read()  # written between the last read and the status check
                    pending += rest
                    yield from (line for line in pending.split("\n") if line)
                    return
                time.sleep(POLL_SECONDS)

    # -- cancel ---------------------------------------------------------------------------------

    def cancel(self, *, timeout: float = 60.0) -> None:
        """Stop the run: every process of it is terminated (TERM, grace, KILL) and checked gone."""
        if self.get_status() in TERMINAL_STATUSES:
            return
        (self.paths.root / "cancel.requested").touch()
        deadline = time.monotonic() + timeout
        while self.get_status() not in TERMINAL_STATUSES and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
        leftovers = processes_of_run(self.id)
        if self.get_status() not in TERMINAL_STATUSES or leftovers:
            for pid in [*leftovers, self._runner_pid()]:
                if pid and pid_alive(pid):
                    os.kill(pid, 9)
            if self.get_status() not in TERMINAL_STATUSES:
                update_record(self.paths, status="Canceled", error="canceled by the user",
                              finished=time.time())
        if processes_of_run(self.id):
            raise TfsubmitError(f"run {self.id}: processes {processes_of_run(self.id)} survived "
                                "SIGKILL")

    # -- files ----------------------------------------------------------------------------------

    def get_file_names(self) -> list[str]:
        """Files of the run, relative to its folder: outputs/..., logs/..., output.log."""
        names = []
        for folder in (self.paths.outputs, self.paths.logs):
            names += [str(p.relative_to(self.paths.root)) for p in folder.rglob("*") if p.is_file()]
        names.append(self.paths.output_log.name)
        return sorted(names)

    def download_file(self, name: str, output_file_path: str | Path | None = None) -> Path:
        source = self.paths.root / name
        if name not in self.get_file_names():
            raise TfsubmitError(f"run {self.id} has no file {name!r}; see get_file_names()")
        target = Path(output_file_path or Path(name).name)
        if target.is_dir():
            target = target / Path(name).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
        return target

    def download_files(
        self, prefix: str = "outputs/", output_directory: str | Path = "."
    ) -> list[Path]:
        """Copy every file whose name starts with `prefix`, keeping the relative paths."""
        copied = []
        for name in self.get_file_names():
            if name.startswith(prefix):
                target = Path(output_directory) / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(self.paths.root / name, target)
                copied.append(target)
        return copied


class SweepRun(Run):
    """A hyperparameter sweep: its trials are runs of the same experiment."""

    def get_trials(self) -> list[dict[str, Any]]:
        """Every trial so far, best first: trial, run_id, params, status, value, error,
        duration. Status is Completed, EarlyTerminated, Failed, Canceled or Running."""
        return self.get_details().get("trials", [])

    def get_children(self) -> list[Run]:
        """The trials' runs, in trial order."""
        rows = sorted(self.get_trials(), key=lambda row: row["trial"])
        return [Run(row["run_id"], workspace=self.workspace.root) for row in rows]

    def get_best_run(self) -> Run | None:
        """The completed trial with the best primary metric (None if none completed)."""
        best = self.get_details().get("best_trial")
        return Run(best, workspace=self.workspace.root) if best else None

    def resume(self) -> SweepRun:
        """Continue an interrupted (Failed or Canceled) sweep: trials already done are kept,
        trials cut off are run again, and new ones are drawn up to the total."""
        details = self.get_details()
        if details["status"] not in ("Failed", "Canceled"):
            raise TfsubmitError(f"sweep {self.id} is {details['status']}; only a Failed or "
                                "Canceled sweep can be resumed")
        (self.paths.root / "cancel.requested").unlink(missing_ok=True)
        # Until the new runner's pid is written, this (live) process stands in for it: a
        # reader must not take the old runner's death for the new one's.
        (self.paths.root / "runner.pid").write_text(str(os.getpid()))
        update_record(self.paths, status="Queued", outcome=None, error=None, finished=None,
                      resumed=time.time())
        experiment = Experiment(details["experiment"], workspace=self.workspace.root)
        experiment._start_runner(self.paths)
        return self


def run_of(run_id: str, *, workspace: str | Path | None = None) -> Run:
    """A run of the workspace, as a SweepRun when it is a sweep."""
    run = Run(run_id, workspace=workspace)
    if (read_json(run.paths.record) or {}).get("kind") == "sweep":
        return SweepRun(run_id, workspace=workspace)
    return run


def open_run(run_id: str, *, workspace: str | Path | None = None) -> BaseRun:
    """The run with this id: from the workspace, else a flow run of that name in the Prefect
    API (a run a deployment's worker executed elsewhere)."""
    try:
        return run_of(run_id, workspace=workspace)
    except RunNotFoundError as missing:
        from tfsubmit.deployment_run import DeploymentRun
        from tfsubmit.prefect_api import PrefectAPI, api_url

        url = api_url(workspace, start=False)
        found = url and DeploymentRun.find(run_id, PrefectAPI(url))
        if not found:
            raise missing from None
        return found
