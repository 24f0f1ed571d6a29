"""What launchers hand to compute targets: immutable descriptions of processes to start."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True)
class Node:
    """One machine of a target, as the launchers see it."""

    host: str
    workdir: str
    slots: int = 1
    gpus: int = 0
    python: str = ""  # the job environment's interpreter on this node
    runtime: str = ""  # the folder holding tfsubmit's in-job runtime on this node
    address: str = ""  # where other nodes reach this one (default: host)


@dataclass(frozen=True)
class ProcessSpec:
    """One process of a job. `env` holds only what the job adds to the target's base env."""

    host: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str
    role: str
    index: int
    log_name: str = field(default="")
    # mpirun: the host of each rank; its `--tag-output` lines are re-tagged rank:N@host.
    rank_hosts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "argv", tuple(self.argv))
        object.__setattr__(self, "env", MappingProxyType(dict(self.env)))
        if not self.log_name:
            object.__setattr__(self, "log_name", f"{self.role}-{self.index}.log")

    @property
    def tag(self) -> str:
        """The prefix of every line this process prints in the merged log."""
        return f"[{self.role}:{self.index}@{self.host}]"


@dataclass(frozen=True)
class RemoteShell:
    """How mpirun on the first node reaches the other nodes (ssh with the target's key)."""

    key_file: str
    port: int
    known_hosts: str


@dataclass(frozen=True)
class LaunchOptions:
    """What a target tells the launchers about how its processes run and reach each other."""

    # mpirun refuses to run as root unless told to.
    as_root: bool = False
    # None: every rank runs on one machine (or in one container), no remote shell needed.
    remote_shell: RemoteShell | None = None
    # Where a task is reached when each task has its own host name (one container per task);
    # None: tasks are reached at their node's address.
    task_host: Callable[[str, int], str] | None = None
    # Processes run inside a scheduler's allocation (Slurm): mpirun launches through it
    # (no remote shell) and names hosts as the scheduler does.
    in_allocation: bool = False


# Nothing special: not root, one machine, tasks at their node's address.
DEFAULT_LAUNCH = LaunchOptions()
