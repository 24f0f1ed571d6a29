"""The local target: processes on this machine, each in its own session and process group."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tfsubmit.process import Node, ProcessSpec
from tfsubmit.procfs import processes_of_run

# Variables of the orchestrator's own Python that must not leak into the job's interpreter.
_DROPPED = ("VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH", "CONDA_PREFIX", "PYTHONSTARTUP")
_DROPPED_PREFIXES = ("PREFECT_", "TFSUBMIT_")


class LocalProcess:
    """A running process group started from a ProcessSpec."""

    def __init__(self, spec: ProcessSpec, popen: subprocess.Popen[str]) -> None:
        self.spec = spec
        self._popen = popen
        self.pid = popen.pid

    def lines(self) -> Iterator[str]:
        """Output lines (stdout and stderr merged), until the process closes them."""
        assert self._popen.stdout is not None
        for line in self._popen.stdout:
            yield line.rstrip("\n")

    def poll(self) -> int | None:
        return self._popen.poll()

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass


def gpu_count() -> int:
    """GPUs on this machine, as `nvidia-smi` lists them (0 without a driver)."""
    try:
        listing = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20,
        )
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return 0
    return len(listing.stdout.split()) if listing.returncode == 0 else 0


class LocalTarget:
    name = "local"
    host = "local"
    remote = False
    bytes_uploaded = 0

    def provision(self, run_dir: Path, *, python: str, runtime: str) -> Node:
        """A per-run working directory with outputs/ and logs/ for the job."""
        workdir = run_dir / "work"
        for sub in ("outputs", "logs", ".tfsubmit"):
            (workdir / sub).mkdir(parents=True, exist_ok=True)
        return Node(host=self.host, workdir=str(workdir), slots=os.cpu_count() or 1,
                    gpus=gpu_count(), python=python, runtime=runtime, address="127.0.0.1")

    def base_env(self) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in _DROPPED and not key.startswith(_DROPPED_PREFIXES)
        }
        return env

    def start(self, spec: ProcessSpec) -> LocalProcess:
        env = self.base_env()
        if os.path.isabs(spec.argv[0]):
            env["PATH"] = os.pathsep.join([os.path.dirname(spec.argv[0]), env.get("PATH", "")])
        env.update(spec.env)
        popen = subprocess.Popen(
            list(spec.argv),
            cwd=spec.cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,  # own session and process group: cancel hits all of it
        )
        return LocalProcess(spec, popen)

    def leftovers(self, run_id: str) -> list[tuple[str, int]]:
        """Live processes of the run, found by the run id in their environment."""
        return [(self.host, pid) for pid in processes_of_run(run_id)]

    def kill(self, processes: list[tuple[str, int]]) -> None:
        for _, pid in processes:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def collect(self, node: Node, dest: Path) -> list[str]:
        """Move the node's outputs/, logs/ and metric files into `dest` (same disk: cheap)."""
        work = Path(node.workdir)
        for name in ("outputs", "logs", ".tfsubmit"):
            source = work / name
            if not source.is_dir():
                continue
            target_dir = dest / name
            target_dir.mkdir(parents=True, exist_ok=True)
            for entry in source.iterdir():
                target = target_dir / entry.name
                if target.exists():
                    target = target_dir / f"job-{entry.name}"  # never overwrite tfsubmit's logs
                shutil.move(str(entry), target)
        return []

    runs_as_root = os.geteuid() == 0

    def mpi_ssh(self) -> None:
        """mpirun needs no remote shell on one machine."""
        return None

    def metric_files(self, nodes: list[Node]) -> list[Path]:
        """The metric files the job's processes are writing now (read live)."""
        return [path for node in nodes
                for path in (Path(node.workdir) / ".tfsubmit").glob("metrics-*.jsonl")]

    def last_activity(self, nodes: list[Node]) -> float:
        """When the job last logged a metric (wall clock), for the hang watchdog."""
        return max((path.stat().st_mtime for path in self.metric_files(nodes)), default=0.0)

    def close(self) -> None:
        pass
