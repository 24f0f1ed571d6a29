"""Local processes: facts read from /proc (Linux), and stopping a process group.

Standard library only: the host agent uses this module on SSH hosts too.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def _state(pid: int | str) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def pid_alive(pid: int) -> bool:
    """True for a live process; a zombie (exited, not yet reaped) counts as gone."""
    return _state(pid) not in (None, "Z", "X")


def processes_of_run(run_id: str) -> list[int]:
    """PIDs of live processes whose environment carries TFSUBMIT_RUN_ID=run_id.

    This also finds children that left the process group (setsid, daemonised helpers).
    """
    marker = f"TFSUBMIT_RUN_ID={run_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker not in (entry / "environ").read_bytes().split(b"\0"):
                continue
        except OSError:
            continue
        if pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def signal_group(pgid: int, sig: int) -> None:
    """Signal a whole process group; one that is gone already is fine."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def kill_pids(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def still_running(list_them: Callable[[], list[T]], *, seconds: float) -> list[T]:
    """What `list_them()` still lists after up to `seconds` of waiting for it to empty: a
    killed process lingers until the kernel has torn it down."""
    left = list_them()
    deadline = time.monotonic() + seconds
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = list_them()
    return left


def terminate_then_kill(
    send: Callable[[int], None],
    alive: Callable[[], bool],
    *,
    grace: float,
    wait: Callable[[float], None] = time.sleep,
) -> bool:
    """SIGTERM, up to `grace` seconds for it to end, then SIGKILL (to the group even where
    its leader has exited: helpers it left behind go too). The one way tfsubmit stops a
    process group, local or remote: `send` signals it, `alive` says whether it still runs,
    `wait` passes time (the supervisor keeps draining output meanwhile).

    Returns True when it ended within the grace period.
    """
    send(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while alive() and time.monotonic() < deadline:
        wait(0.05)
    ended = not alive()
    send(signal.SIGKILL)
    return ended
