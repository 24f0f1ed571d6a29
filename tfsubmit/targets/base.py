"""The one target protocol: what the pipeline asks of every compute target.

Local, SSH and Docker targets implement `Target` completely, and the pipeline never asks
which kind it holds. A target decides where and how a `ProcessSpec` runs; it never imports
launchers, the pipeline or Prefect. A new target is one module here plus one entry in
`config.py` (its settings model and its line in `TARGETS`).

One target object serves one submission: `prepare_environment`, then `provision`, then
processes (`start`, `leftovers`, `kill`), then `collect` and `close`.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tfsubmit.errors import TargetError
from tfsubmit.spec.environment import Environment, EnvironmentSpec
from tfsubmit.spec.job import TrainingJob
from tfsubmit.spec.process import LaunchOptions, Node, ProcessSpec
from tfsubmit.store.cancel import CancelFlag
from tfsubmit.store.objects import ObjectStore
from tfsubmit.store.runlog import RunLog, StderrLine
from tfsubmit.store.snapshots import Snapshot


class Handle(Protocol):
    """A started process (group) of a job."""

    spec: ProcessSpec
    pid: int | str

    def lines(self) -> Iterator[str]:
        """Its output lines until it closes them: stdout's and stderr's as they come, each
        of stderr's a StderrLine where the target keeps the two apart."""
        ...

    def poll(self) -> int | None:
        """Its exit code, None while it runs; TargetError when its host is lost."""
        ...

    # Why it ended when not by itself (its scheduler requeued or ended the job), else None;
    # a handle may leave it out.
    ended_by: str | None

    def signal_group(self, sig: int) -> None:
        """Signal its whole process group (never raises for one that is gone)."""
        ...


def merged_lines(stdout: Iterable[str], stderr: Iterable[str]) -> Iterator[str]:
    """A process's lines from both its streams, in the order they come, stderr's as
    StderrLine, until both are closed (each stream read by a thread of its own)."""
    lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()

    def pump(stream: Iterable[str], kind: type[str]) -> None:
        try:
            for line in stream:
                lines.put(kind(line))
        finally:
            lines.put(None)

    for stream, kind in ((stdout, str), (stderr, StderrLine)):
        threading.Thread(target=pump, args=(stream, kind), daemon=True,
                         name="process-lines").start()
    open_streams = 2
    while open_streams:
        line = lines.get()
        if line is None:
            open_streams -= 1
        else:
            yield line


@dataclass(frozen=True)
class ProvisionRequest:
    """Everything a target needs to make its nodes ready for one run."""

    run_id: str
    run_dir: Path  # the run's folder on this machine
    job: TrainingJob
    snapshot: Snapshot
    store: ObjectStore
    env_spec: EnvironmentSpec
    environment: Environment  # what prepare_environment returned
    runtime: Path  # this machine's copy of tfsubmit's in-job runtime
    log: RunLog
    cancel: CancelFlag
    # Facts for the run's record (a scheduler's job id, say).
    note: Callable[..., None] = lambda **facts: None
    # A scheduler holds the run's nodes back: its reason (the run is Queued), or None once
    # they are allocated.
    queued: Callable[[str | None], None] = lambda reason: None


@dataclass(frozen=True)
class Provisioned:
    """Nodes ready to run processes: connected, checked, snapshot staged, environment there."""

    nodes: list[Node]
    environments: dict[str, Environment]  # by node host
    uploaded_bytes: int = 0


class Target(Protocol):
    """A compute target: where and how a job's processes run."""

    name: str

    def hosts(self) -> list[Node]:
        """The machines it offers, before connecting (host, slots, gpus)."""
        ...

    def admit(self, job: TrainingJob) -> None:
        """Refuse, naming the field, a job it cannot run; checked at submit, before a run
        exists, without connecting anywhere."""
        ...

    def prepare_environment(self, job: TrainingJob, spec: EnvironmentSpec, *, cache: Path,
                            log: RunLog, cancel: CancelFlag) -> Environment:
        """Find or build the job's environment, where the target builds it before the nodes
        exist; where each host builds its own while provisioning, an unresolved one."""
        ...

    def provision(self, request: ProvisionRequest) -> Provisioned:
        """Make the nodes ready: connected, pre-flight checked, snapshot staged."""
        ...

    def attach(self, run_id: str, nodes: list[Node]) -> list[str]:
        """Reach the nodes of run `run_id` again after its runner died, so that what is
        left of it can be stopped and its files collected; returns the problems met."""
        ...

    def launch_options(self) -> LaunchOptions:
        """How its processes run and reach each other, for the launchers."""
        ...

    def start(self, spec: ProcessSpec) -> Handle:
        """Start one process; returns once it is started (its output follows)."""
        ...

    # start() may be called from several threads at once: a job's processes are then
    # started together (each start waits on its own host). Optional; absent means False.
    concurrent_start: bool

    # Optional: `scheduler_cause() -> str | None`, why the target's scheduler ended the
    # job (canceled outside tfsubmit, a node lost, a time limit): a failed run's reason
    # then names it first.

    def leftovers(self, run_id: str) -> list[tuple[str, int | str]]:
        """(host, process) of every live process of the run, also those that left the group."""
        ...

    def kill(self, processes: list[tuple[str, int | str]]) -> None:
        ...

    def metric_files(self, nodes: list[Node]) -> list[Path]:
        """The metric files the job is writing, readable live here (may be none)."""
        ...

    def last_activity(self, nodes: list[Node]) -> float:
        """When the job last logged a metric (wall clock; 0 when unknown), for the watchdog."""
        ...

    def collect(self, node: Node, dest: Path) -> list[str]:
        """Bring the node's outputs/, logs/ and metric files into `dest`; returns problems."""
        ...

    def close(self) -> None:
        """Release connections; leave nothing of the run behind."""
        ...


def check_node_count(job: TrainingJob, target: str, host_count: int) -> None:
    if job.node_count > host_count:
        raise TargetError(f"node_count: {job.node_count} nodes asked, but target "
                          f"{target!r} has {host_count} host(s); lower node_count "
                          "(process_count_per_node runs more processes on each), or use a "
                          "target with that many hosts")


def refuse_custom_image(job: TrainingJob, target: str) -> None:
    """custom_docker_image means a container: a target that runs none refuses it."""
    if job.custom_docker_image:
        raise TargetError(f"custom_docker_image: only used with docker targets; "
                          f"{target!r} is not one")
