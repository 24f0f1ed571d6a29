"""The workspace on disk: runs, the content-addressed object store, the embedded server.

Layout (`TFSUBMIT_WORKSPACE`, default `~/.tfsubmit`):

    objects/ab/cdef...        snapshot files, by sha256
    runs/<run id>/            one folder per run (see RunPaths)
    runtime/<hash>/tfsubmit/  the in-job runtime, put on the job's PYTHONPATH
    prefect/                  PREFECT_HOME of the embedded server
    targets.yaml              named compute targets

Job environments are big and shared between workspaces: `TFSUBMIT_ENV_CACHE`,
default `~/.cache/tfsubmit/envs`.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tfsubmit.errors import RunNotFoundError

TERMINAL_STATUSES = ("Completed", "Failed", "Canceled")
STATUSES = ("Queued", "Preparing", "Running", *TERMINAL_STATUSES)


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
        return self.root / "run.json"

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
    def runner_log(self) -> Path:
        return self.root / "runner.log"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def outputs(self) -> Path:
        return self.root / "outputs"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    def metric_files(self) -> list[Path]:
        """Every metric file of the run, wherever it is at this moment: the local node's
        while the job runs; after collection, the run folder's and each other host's. Read
        together they hold all the run's metrics, live, in the order metrics.jsonl has them."""
        return sorted([*self.work.glob(".tfsubmit/metrics-*.jsonl"),
                       *self.root.glob(".tfsubmit/metrics-*.jsonl"),
                       *self.root.glob("hosts/*/.tfsubmit/metrics-*.jsonl")])

    @property
    def work(self) -> Path:
        """The local node's working directory (snapshot, outputs/, logs/ while running)."""
        return self.root / "work"


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

    def new_run_id(self, experiment: str) -> str:
        stamp = time.strftime("%Y%m%d_%H%M%S", time.gmtime())
        return f"{experiment}_{stamp}_{secrets.token_hex(3)}"

    def run_paths(self, run_id: str) -> RunPaths:
        paths = RunPaths(self.runs / run_id)
        if not paths.record.exists():
            raise RunNotFoundError(
                f"no run {run_id!r} in workspace {self.root} (list them with `tfsubmit runs`)"
            )
        return paths

    def create_run(self, run_id: str, experiment: str, job: dict[str, Any]) -> RunPaths:
        paths = RunPaths(self.runs / run_id)
        paths.root.mkdir(parents=True)
        paths.logs.mkdir()
        paths.outputs.mkdir()
        write_json(paths.job, job)
        write_json(
            paths.record,
            {
                "id": run_id,
                "experiment": experiment,
                "status": "Queued",
                "created": time.time(),
                "workspace": str(self.root),
                "compute_target": job.get("compute_target", "local"),
            },
        )
        paths.output_log.touch()
        return paths

    def list_runs(self, experiment: str | None = None) -> list[dict[str, Any]]:
        """Run records, newest first."""
        records = []
        if self.runs.is_dir():
            for entry in self.runs.iterdir():
                record = read_json(entry / "run.json")
                if record and (experiment is None or record.get("experiment") == experiment):
                    records.append(record)
        return sorted(records, key=lambda r: r.get("created", 0), reverse=True)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically, so readers in other processes never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2))  # key order kept: script_params order matters
    os.replace(tmp, path)


def update_record(paths: RunPaths, **changes: Any) -> dict[str, Any]:
    """Merge changes into run.json. Only the run's runner writes it while the run is live."""
    record = read_json(paths.record) or {}
    record.update(changes)
    write_json(paths.record, record)
    return record
