"""Local processes: facts read from /proc (Linux), and stopping a process group.

Standard library only: the host agent uses this module on SSH hosts too.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterable
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


# Environment markers, read from /proc/PID/environ (what a process was started with):
RUN_MARKER = "TFSUBMIT_RUN_ID"  # every process of a job's task
KEEPER_MARKER = "TFSUBMIT_KEEPER_OF"  # a host agent holding a task (a subreaper)
SERVICE_MARKER = "TFSUBMIT_SERVICE"  # tfsubmit's own helpers: servers, environment builds
_PR_SET_CHILD_SUBREAPER, _PR_GET_CHILD_SUBREAPER = 36, 37


def become_subreaper() -> bool:
    """Adopt every orphan among this process's descendants (Linux): a task's helper that
    double-forks and calls setsid still ends up a child of this process, where the run's
    leftover check finds it even with an empty environment. False where it cannot."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def is_subreaper() -> bool:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        flag = ctypes.c_int(0)
        return libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), 0, 0, 0) == 0 \
            and flag.value == 1
    except (OSError, AttributeError):
        return False


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else int(fields[1])


def _markers(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    found = {}
    for item in raw.split(b"\0"):
        if item.startswith(b"TFSUBMIT_"):
            name, _, value = item.decode(errors="replace").partition("=")
            if name in (RUN_MARKER, KEEPER_MARKER, SERVICE_MARKER):
                found[name] = value
    return found


def _parents() -> dict[int, int]:
    """pid -> parent pid of every live (not zombie) process."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            ppid = _ppid(int(entry.name))
            if ppid is not None:
                parents[int(entry.name)] = ppid
    return parents


def _children(parents: dict[int, int]) -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    return children


def descendants(pid: int) -> list[int]:
    """Every live process below `pid`."""
    children = _children(_parents())
    found, stack = [], list(children.get(pid, []))
    while stack:
        child = stack.pop()
        found.append(child)
        stack += children.get(child, [])
    return sorted(found)


def processes_of_run(run_id: str, *, keeper: int | None = None,
                     keepers: Iterable[int] = ()) -> list[int]:
    """PIDs of the live processes of run `run_id` on this machine.

    Those started with TFSUBMIT_RUN_ID=run_id, everything below them, and everything below
    the run's keepers (host agents started with TFSUBMIT_KEEPER_OF=run_id; `keepers`, host
    agents forked without it (agentd.py); `keeper`, a subreaper such as the run's runner):
    a helper that left the process group (setsid), double-forked and dropped its
    environment is still found, as the keeper adopted it. Below a keeper, processes of
    other runs and tfsubmit's own services (and what is below them) are not the run's.
    Keepers themselves are not listed.
    """
    parents = _parents()
    children = _children(parents)
    markers = {pid: _markers(pid) for pid in parents}
    keepers = {pid for pid, m in markers.items()
               if m.get(KEEPER_MARKER) == run_id and RUN_MARKER not in m} \
        | {pid for pid in keepers if pid in parents} \
        | ({keeper} if keeper is not None else set())
    roots = [pid for pid, m in markers.items() if m.get(RUN_MARKER) == run_id]
    found: set[int] = set()
    stack = roots + [child for k in keepers for child in children.get(k, [])]
    while stack:
        pid = stack.pop()
        m = markers.get(pid, {})
        if pid in found or pid in keepers or SERVICE_MARKER in m \
                or m.get(RUN_MARKER, run_id) != run_id:
            continue
        found.add(pid)
        stack += children.get(pid, [])
    return sorted(found)


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


def reap_adopted(pids: list[int], *, seconds: float = 5.0) -> None:
    """Collect the exit of killed orphans this process adopted as a subreaper (else they
    stay zombies while it lives). Pids that are not its children are skipped."""
    waiting = set(pids)
    deadline = time.monotonic() + seconds
    while waiting and time.monotonic() < deadline:
        for pid in list(waiting):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid  # not our child: nothing to collect
            if done:
                waiting.discard(pid)
        if waiting:
            time.sleep(0.02)


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


def stop_recorded(state_file: Path, *, grace: float) -> bool:
    """Stop the service whose state file (JSON with its "pid") is `state_file`: its process
    group TERM, `grace` seconds, then KILL; the file goes first, so nobody takes the service
    for running meanwhile. False when none was running."""
    try:
        pid = json.loads(state_file.read_text())["pid"]
    except (OSError, ValueError, KeyError, TypeError):
        pid = None
    state_file.unlink(missing_ok=True)
    if pid is None or not pid_alive(pid):
        return False

    def alive() -> bool:
        try:  # our own child (started by this process): reap it, or it lingers as a zombie
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        return pid_alive(pid)

    terminate_then_kill(lambda sig: signal_group(pid, sig), alive, grace=grace,
                        wait=lambda seconds: time.sleep(max(seconds, 0.1)))
    return True


def live_group_members(pgid: int) -> list[int]:
    """The pids of process group `pgid` that are not zombies (from /proc)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # After the command: state, ppid, pgrp.
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != b"Z":
            found.append(int(entry.name))
    return found
