"""Where the workspace keeps everything. Every file name of the workspace is spelled here.

Layout (`TFSUBMIT_WORKSPACE`, default `~/.tfsubmit`):

    objects/ab/cdef...        snapshot files, by sha256 (see objects.py)
    runs/<run id>/            one folder per run (see RunPaths)
    runtime/<hash>/tfsubmit/  the in-job runtime, put on the job's PYTHONPATH
    prefect/                  PREFECT_HOME of the embedded server, and the fork server's files
    models/<experiment>/<n>/  promoted models (see registry.py)
    targets.yaml              named compute targets

Job environments are big and shared between workspaces: `TFSUBMIT_ENV_CACHE`,
default `~/.cache/tfsubmit/envs`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tfsubmit.errors import RunNotFoundError, StorageError, TfsubmitError
from tfsubmit.runtime.metrics import IMAGES_DIR, METRICS_DIR, METRICS_GLOB

# A run id names one folder under runs/: never empty, no path separator, no leading dot.
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")
# The folders of a node's working directory that tfsubmit collects after a run.
NODE_FOLDERS = ("outputs", "logs", METRICS_DIR)


def default_workspace() -> Path:
    return Path(os.environ.get("TFSUBMIT_WORKSPACE", "~/.tfsubmit")).expanduser()


def default_env_cache() -> Path:
    return Path(os.environ.get("TFSUBMIT_ENV_CACHE", "~/.cache/tfsubmit/envs")).expanduser()


@dataclass(frozen=True)
class RunPaths:
    """Where one run keeps its record, logs, metrics and outputs."""

    root: Path

    @property
    def record(self) -> Path:
        """run.json: written only by store.record.RunRecord."""
        return self.root / "run.json"

    @property
    def record_lock(self) -> Path:
        return self.root / ".run.lock"

    @property
    def job(self) -> Path:
        return self.root / "job.json"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def freeze(self) -> Path:
        return self.root / "pip-freeze.txt"

    @property
    def output_log(self) -> Path:
        """The merged log: every line tagged `[role:index@host]` or `[tfsubmit]`."""
        return self.root / "output.log"

    @property
    def runner_pid(self) -> Path:
        """The pid of the process executing the run's flow (runner, worker or sweep)."""
        return self.root / "runner.pid"

    @property
    def reserve(self) -> Path:
        """Space set aside when the run is made, given up so that its record can still be
        written when the disk fills up (see store.record)."""
        return self.root / ".reserve"

    @property
    def runner_lock(self) -> Path:
        """Held while the run is alive: by its submitter, then its runner (store.runlock)."""
        return self.root / "runner.lock"

    @property
    def cancel_file(self) -> Path:
        """Its presence asks the run to stop; its text says why (see store.cancel)."""
        return self.root / "cancel.requested"

    @property
    def study(self) -> Path:
        """A sweep's Optuna study."""
        return self.root / "study.journal"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def outputs(self) -> Path:
        return self.root / "outputs"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def attempts(self) -> Path:
        """Earlier attempts of a run Prefect retried: attempts/<n>/ holds attempt n's
        record, logs, metrics and outputs as they were."""
        return self.root / "attempts"

    # What one attempt of a run wrote, moved aside whole when Prefect retries the run.
    ATTEMPT_FILES = ("run.json", "output.log", "metrics.jsonl", "logs",
                     "outputs", "metrics", "manifest.json", "pip-freeze.txt",
                     "cancel.requested")

    @property
    def images(self) -> Path:
        """Images the job logged (log_image), every node's, once collected."""
        return self.root / IMAGES_DIR

    @property
    def work(self) -> Path:
        """The local node's working directory (snapshot, outputs/, logs/ while running)."""
        return self.root / "work"

    def host_folder(self, host: str) -> Path:
        """Where the files collected from a node other than the first go."""
        return self.root / "hosts" / host

    def metric_files(self) -> list[Path]:
        """Every metric file of the run, wherever it is at this moment: the local node's
        while the job runs; after collection, the run folder's and each other host's. Read
        together they hold all the run's metrics, live, in the order metrics.jsonl has them."""
        return sorted([*(self.work / METRICS_DIR).glob(METRICS_GLOB),
                       *self.root.glob(f"hosts/*/work/{METRICS_DIR}/{METRICS_GLOB}"),
                       *(self.root / METRICS_DIR).glob(METRICS_GLOB),
                       *self.root.glob(f"hosts/*/{METRICS_DIR}/{METRICS_GLOB}")])


class Workspace:
    """A folder holding runs, snapshots and the embedded Prefect server's state."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root).expanduser().resolve() if root else default_workspace().resolve()
        self.env_cache = default_env_cache()

    @property
    def objects(self) -> Path:
        return self.root / "objects"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def prefect_home(self) -> Path:
        return self.root / "prefect"

    @property
    def runtime(self) -> Path:
        return self.root / "runtime"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def targets_file(self) -> Path:
        return self.root / "targets.yaml"

    # -- the embedded server and the fork server (service/) -----------------------------------

    @property
    def server_state(self) -> Path:
        return self.prefect_home / "server.json"

    @property
    def server_database(self) -> Path:
        """The database URL the embedded server uses when not its own SQLite (0600)."""
        return self.prefect_home / "database.url"

    @property
    def server_lock(self) -> Path:
        return self.prefect_home / "server.lock"

    @property
    def server_log(self) -> Path:
        return self.prefect_home / "server.log"

    @property
    def forkserver_socket(self) -> Path:
        return self.prefect_home / "forkserver.sock"

    @property
    def forkserver_state(self) -> Path:
        return self.prefect_home / "forkserver.json"

    @property
    def forkserver_log(self) -> Path:
        return self.prefect_home / "forkserver.log"

    @property
    def server_port(self) -> Path:
        """The embedded server's last port, kept across stops."""
        return self.prefect_home / "server.port"

    @property
    def submit_lock(self) -> Path:
        """Held by a submitter while it creates its run's flow run."""
        return self.prefect_home / "submit.lock"

    @property
    def worker_state(self) -> Path:
        return self.prefect_home / "worker.json"

    @property
    def worker_log(self) -> Path:
        return self.prefect_home / "worker.log"

    # -- runs -----------------------------------------------------------------------------------

    def new_run_id(self, experiment: str) -> str:
        stamp = time.strftime("%Y%m%d_%H%M%S", time.gmtime())
        return f"{experiment}_{stamp}_{secrets.token_hex(3)}"

    def stat_cache(self, source: str | Path) -> Path:
        """The stat cache of one source tree (pipeline/snapshot.py: StatCache)."""
        key = hashlib.sha256(str(Path(source).resolve()).encode()).hexdigest()[:16]
        return self.root / "statcache" / f"{key}.json"

    def paths_of(self, run_id: str) -> RunPaths:
        """The paths of run `run_id`, whether or not it exists yet. An id that could name
        anything but a folder of runs/ ('', '../x', '/abs') is refused."""
        if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
            raise TfsubmitError(
                f"run id {run_id!r} is not a run id (letters, digits, '_', '.', '-'; it "
                "names a folder of the workspace's runs/); list runs with `tfsubmit runs`")
        return RunPaths(self.runs / run_id)

    def resolve_run_id(self, text: str) -> str:
        """The id of the one run that `text` names: its full id, a unique prefix of it, or
        `latest` (the newest run). RunNotFoundError when none does; a TfsubmitError listing
        the candidates when several do."""
        if text == "latest":
            newest = self.list_runs()
            if not newest:
                raise RunNotFoundError(f"no runs yet in workspace {self.root}")
            return newest[0]["id"]
        paths = self.paths_of(text)
        if paths.record.exists() or not self.runs.is_dir():
            return text
        matches = sorted(entry.name for entry in self.runs.iterdir()
                         if entry.name.startswith(text) and RunPaths(entry).record.exists())
        if len(matches) == 1:
            return matches[0]
        if matches:
            shown = ", ".join(matches[:10]) + (", ..." if len(matches) > 10 else "")
            raise TfsubmitError(f"run id {text!r} is the start of {len(matches)} runs: "
                                f"{shown}; give more of the id")
        return text  # run_paths says it does not exist

    def run_paths(self, run_id: str) -> RunPaths:
        """The paths of an existing run; RunNotFoundError when there is none."""
        paths = self.paths_of(run_id)
        if not paths.record.exists():
            raise RunNotFoundError(
                f"no run {run_id!r} in workspace {self.root} (list them with `tfsubmit runs`)"
            )
        return paths

    def list_runs(self, experiment: str | None = None) -> list[dict[str, Any]]:
        """Run records, newest first. A record that cannot be read is listed with status
        `Unreadable` and the reason as its `error` (and left as it is)."""
        records = []
        if self.runs.is_dir():
            for entry in self.runs.iterdir():
                path = RunPaths(entry).record
                try:
                    record = read_record(path)
                except UnreadableRecordError as exc:
                    record = {"id": entry.name, "status": "Unreadable", "error": str(exc),
                              "created": _mtime(path)}
                if record and (experiment is None or record.get("experiment") == experiment):
                    records.append(record)
        return sorted(records, key=lambda r: r.get("created", 0), reverse=True)


def disk_full(path: Path, exc: OSError | None = None) -> StorageError:
    """The error for a write that found no space, naming where and what to free."""
    try:
        free = shutil.disk_usage(path if path.exists() else path.parent).free
        there = f"{free // 1024} KiB free there"
    except OSError:
        there = "its free space unknown"
    runs = default_workspace() / "runs"
    return StorageError(
        f"no space left on the device holding {path} ({there}): free space on it (old "
        f"runs' folders, e.g. under {runs}; job environments no run needs, under "
        f"{default_env_cache()}) and try again" + (f" [{exc.strerror}]" if exc else ""))


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


class UnreadableRecordError(TfsubmitError):
    """A run's run.json exists but cannot be read: it is reported, never overwritten."""


def read_record(path: Path) -> dict[str, Any]:
    """A run's record; {} when there is none yet; UnreadableRecordError when it is damaged."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise UnreadableRecordError(f"{path} cannot be read: {exc}; it is left as it is") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise UnreadableRecordError(
            f"{path} is damaged (not JSON: {exc}); it is left as it is: repair or remove "
            f"the run folder") from None
    if not isinstance(data, dict) or not isinstance(data.get("id"), str):
        raise UnreadableRecordError(f"{path} is damaged (not a run record); it is left as it "
                                    f"is: repair or remove the run folder")
    return data


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically, so readers in other processes never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    text = json.dumps(data, indent=2)  # key order kept: script_params order matters
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk, say: no half-written .tmp left behind
        raise
