"""The runner lock: held, from the moment a run folder exists until its runner exits, by
whoever is responsible for the run, so that any reader tells a live run from a dead one by
asking the kernel, never by reading a pid file.

`Experiment.submit` takes it while it makes the run folder and hands the open lock to the
runner it starts (inherited by a spawned runner, passed over the fork server's socket to a
forked one), so it is never free while the run is alive. The kernel drops it when the last
holder exits, whatever kills it (`kill -9` included).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


def acquire(path: Path) -> int | None:
    """An open descriptor holding the lock at `path`, or None when someone else holds it.
    The descriptor is not inherited by children that exec."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    _MINE[fd] = os.path.realpath(path)
    return fd


# The locks this process holds: fd -> path.
_MINE: dict[int, str] = {}


def held_here(path: Path) -> bool:
    """Whether this very process holds the lock at `path` (a sweep, for its trials)."""
    return os.path.realpath(path) in _MINE.values()


def held(path: Path) -> bool:
    """Whether some process holds the lock at `path` now (False when there is none)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the shared lock we may have taken
    return False


def release(fd: int | None) -> None:
    if fd is not None:
        _MINE.pop(fd, None)
        os.close(fd)
