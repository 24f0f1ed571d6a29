"""The local target: processes on this machine, each in its own session and process group."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tfsubmit.runtime.metrics import METRICS_DIR, METRICS_GLOB
from tfsubmit.spec.environment import Environment, EnvironmentSpec
from tfsubmit.spec.job import TrainingJob
from tfsubmit.spec.process import LaunchOptions, Node, ProcessSpec
from tfsubmit.store.cancel import CancelFlag
from tfsubmit.store.layout import NODE_FOLDERS
from tfsubmit.store.runlog import RunLog
from tfsubmit.store.snapshots import materialize
from tfsubmit.system.processes import (
    is_subreaper,
    kill_pids,
    live_group_members,
    processes_of_run,
    reap_adopted,
    signal_group,
)
from tfsubmit.targets.base import (
    Provisioned,
    ProvisionRequest,
    merged_lines,
    refuse_custom_image,
)
from tfsubmit.targets.envbuild import MARKER, resolve_environment

# Variables of the orchestrator's own Python that must not leak into the job's interpreter.
_DROPPED = ("VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH", "CONDA_PREFIX", "PYTHONSTARTUP")
_DROPPED_PREFIXES = ("PREFECT_", "TFSUBMIT_")


class LocalProcess:
    """A running process group started from a ProcessSpec."""

    ended_by = None  # it ends by itself

    def __init__(self, spec: ProcessSpec, popen: subprocess.Popen[str]) -> None:
        self.spec = spec
        self._popen = popen
        self.pid = popen.pid

    def lines(self) -> Iterator[str]:
        """Output lines, stderr's as StderrLine, until the process closes both streams."""
        assert self._popen.stdout is not None and self._popen.stderr is not None
        yield from merged_lines((line.rstrip("\n") for line in self._popen.stdout),
                                (line.rstrip("\n") for line in self._popen.stderr))

    def poll(self) -> int | None:
        return self._popen.poll()

    def group_alive(self) -> bool:
        """Whether a live process of its group is left once the leader has exited (a child
        still saving its checkpoint on TERM, say); zombies waiting to be reaped are not."""
        return bool(live_group_members(self.pid))

    def signal_group(self, sig: int) -> None:
        signal_group(self.pid, sig)


@functools.cache
def _subreaper() -> bool:
    return is_subreaper()


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


def base_env() -> dict[str, str]:
    """This process's environment, less what belongs to the orchestrator's own Python."""
    return {key: value for key, value in os.environ.items()
            if key not in _DROPPED and not key.startswith(_DROPPED_PREFIXES)}


def start_local(spec: ProcessSpec) -> LocalProcess:
    """Start a spec on this machine in its own session and process group."""
    env = base_env()
    if os.path.isabs(spec.argv[0]):
        env["PATH"] = os.pathsep.join([os.path.dirname(spec.argv[0]), env.get("PATH", "")])
    env.update(spec.env)
    popen = subprocess.Popen(
        list(spec.argv),
        cwd=spec.cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,  # own session and process group: cancel hits all of it
    )
    return LocalProcess(spec, popen)


def stage_locally(request: ProvisionRequest, workdir: Path | None = None) -> Path:
    """The run's working folder on this machine, with the snapshot, outputs/ and logs/."""
    workdir = workdir or request.run_dir / "work"
    for name in NODE_FOLDERS:
        (workdir / name).mkdir(parents=True, exist_ok=True)
    materialize(request.snapshot, request.store, workdir)
    return workdir


class LocalFolders:
    """Files of nodes whose working folders are on this machine's disk (the local target;
    a local Docker engine's bind mounts): metrics read live, outputs moved, not copied."""

    def metric_files(self, nodes: list[Node]) -> list[Path]:
        """The metric files the job's processes are writing now (read live)."""
        workdirs = dict.fromkeys(node.workdir for node in nodes)  # emulated nodes share one
        return [path for workdir in workdirs
                for path in (Path(workdir) / METRICS_DIR).glob(METRICS_GLOB)]

    def last_activity(self, nodes: list[Node]) -> float:
        """When the job last logged a metric (wall clock), for the hang watchdog."""
        return max((path.stat().st_mtime for path in self.metric_files(nodes)), default=0.0)

    def attach(self, run_id: str, nodes: list[Node]) -> list[str]:
        """Nothing to reach: the nodes' folders are on this machine."""
        return []

    def collect(self, node: Node, dest: Path) -> list[str]:
        """Move the node's outputs/, logs/ and metric files into `dest` (same disk: cheap)."""
        for name in NODE_FOLDERS:
            source = Path(node.workdir) / name
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


class LocalTarget(LocalFolders):
    """This machine: one node, environments built in the shared cache."""

    name = "local"
    host = "local"

    def __init__(self) -> None:
        self._started: set[int] = set()  # our own children: subprocess reaps those

    @functools.cached_property
    def _gpus(self) -> int:
        return gpu_count()

    def hosts(self) -> list[Node]:
        return [Node(host=self.host, workdir="", slots=os.cpu_count() or 1, gpus=self._gpus,
                     address="127.0.0.1")]

    def admit(self, job: TrainingJob) -> None:
        refuse_custom_image(job, self.name)  # node_count > 1: emulated; no GPU probe here

    def prepare_environment(self, job: TrainingJob, spec: EnvironmentSpec, *, cache: Path,
                            log: RunLog, cancel: CancelFlag) -> Environment:
        refuse_custom_image(job, self.name)
        if not (cache / spec.hash / MARKER).exists():
            log.event(f"environment {spec.hash}: building ({', '.join(spec.requirements)})")
        env = resolve_environment(spec, cache, cancel=cancel,
                                  on_line=lambda line: log.write(f"[tfsubmit:env] {line}"))
        log.event(f"environment {env.hash}: {env.how()} ({env.python})")
        return env

    def provision(self, request: ProvisionRequest) -> Provisioned:
        """A per-run working directory with the snapshot, outputs/ and logs/ for the job.

        node_count > 1 emulates that many nodes on this machine, so a cluster job runs
        unchanged here first: nodes `local-0`, `local-1`, ..., which share the run's one
        working folder `work/`, as a cluster's nodes share a mounted project folder (Azure
        ML's compute mounted one on every node; scripts of its time pass files through it)."""
        count = request.job.node_count
        workdir = stage_locally(request)
        nodes = [Node(host=self.host if count == 1 else f"{self.host}-{i}",
                      workdir=str(workdir), slots=os.cpu_count() or 1, gpus=self._gpus,
                      python=request.environment.python, runtime=str(request.runtime),
                      address="127.0.0.1")
                 for i in range(count)]
        return Provisioned(nodes, dict.fromkeys((n.host for n in nodes), request.environment))

    def launch_options(self) -> LaunchOptions:
        return LaunchOptions(as_root=os.geteuid() == 0)  # one machine: no remote shell

    def start(self, spec: ProcessSpec) -> LocalProcess:
        process = start_local(spec)
        self._started.add(process.pid)
        return process

    def leftovers(self, run_id: str) -> list[tuple[str, int | str]]:
        """Live processes of the run: found by the run id in their environment, and, where
        this process is the run's subreaper (its runner), every orphan it adopted."""
        keeper = os.getpid() if _subreaper() else None
        return [(self.host, pid) for pid in processes_of_run(run_id, keeper=keeper)]

    def kill(self, processes: list[tuple[str, int | str]]) -> None:
        pids = [int(pid) for _, pid in processes]
        kill_pids(pids)
        reap_adopted([pid for pid in pids if pid not in self._started])

    def close(self) -> None:
        pass


