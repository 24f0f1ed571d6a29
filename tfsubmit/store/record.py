"""A run's record (`run.json`): one owner, named transitions, atomic writes.

    queued -> preparing -> running -> completed | failed | canceled
                                   \\-> (runner died: a view, see `view`)

The flow that executes a run `settle`s its outcome (with the final facts: exit codes,
outputs, duration); the run's status becomes that outcome when the run `end`s, which the
runner does once the flow run has ended (so Prefect and the record always agree). Code
outside this module never writes run.json, and readers never write at all.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
from collections.abc import Iterator
from typing import Any

from tfsubmit.errors import StorageError, TfsubmitError
from tfsubmit.store import runlock
from tfsubmit.store.layout import (
    RunPaths,
    Workspace,
    disk_full,
    is_disk_full,
    read_record,
    write_json,
)

QUEUED, PREPARING, RUNNING = "Queued", "Preparing", "Running"
COMPLETED, FAILED, CANCELED = "Completed", "Failed", "Canceled"
TERMINAL_STATUSES = (COMPLETED, FAILED, CANCELED)
STATUSES = (QUEUED, PREPARING, RUNNING, *TERMINAL_STATUSES)
RUNNER_DIED = ("the run's runner process died (its flow run's process); see the worker's log, "
               "prefect/worker.log in the workspace")


# Bytes set aside in each run folder for the last writes of its record on a full disk.
RESERVE_BYTES = 64 * 1024


def _cannot(path, exc: OSError) -> TfsubmitError:
    if is_disk_full(exc):
        return disk_full(path, exc)
    return TfsubmitError(f"cannot write {path}: {exc.strerror or exc}")


class RunRecord:
    """The one writer of a run's run.json."""

    def __init__(self, paths: RunPaths, lock_fd: int | None = None) -> None:
        self.paths = paths
        # The runner lock, when this object's creator holds it (see store.runlock).
        self.lock_fd = lock_fd

    @classmethod
    def create(cls, workspace: Workspace, run_id: str, experiment: str, job: dict[str, Any],
               **facts: Any) -> RunRecord:
        """A new run folder (logs/, outputs/, job.json, an empty output.log), Queued, with
        its runner lock held by the returned record (`lock_fd`) before anything else is
        written: hand it to the run's runner, or `release_lock()` when the run is over."""
        paths = workspace.paths_of(run_id)
        lock_fd = None
        try:
            for folder in (workspace.root, workspace.runs):  # this user's alone
                folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            paths.root.mkdir(mode=0o700)
        except OSError as exc:
            raise _cannot(paths.root, exc) from None
        try:
            lock_fd = runlock.acquire(paths.runner_lock)
            paths.reserve.write_bytes(bytes(RESERVE_BYTES))
            paths.logs.mkdir(mode=0o700)
            paths.outputs.mkdir(mode=0o700)
            write_json(paths.job, job)
            paths.output_log.touch(mode=0o600)
            write_json(paths.record, {
                "id": run_id,
                "experiment": experiment,
                "status": QUEUED,
                "created": time.time(),
                "workspace": str(workspace.root),
                "compute_target": job.get("compute_target", "local"),
                **facts,
            })
        except OSError as exc:  # nothing half-made is left behind
            runlock.release(lock_fd)
            shutil.rmtree(paths.root, ignore_errors=True)
            raise _cannot(paths.root, exc) from None
        return cls(paths, lock_fd)

    def release_lock(self) -> None:
        runlock.release(self.lock_fd)
        self.lock_fd = None

    # -- reading --------------------------------------------------------------------------------

    def read(self) -> dict[str, Any]:
        """The record ({} before it is written); a damaged one raises UnreadableRecordError
        and is never written over."""
        return read_record(self.paths.record)

    def runner_alive(self) -> bool:
        """Whether a live process is responsible for the run (its runner lock is held)."""
        return runlock.held(self.paths.runner_lock)

    def view(self, *, runner_alive: bool) -> dict[str, Any]:
        """The record as readers should show it: a run whose runner is gone without having
        ended it is Failed (derived here, never written by a reader)."""
        record = self.read()
        if record.get("status") in TERMINAL_STATUSES or runner_alive:
            return record
        return {**record, "status": FAILED, "error": record.get("error") or RUNNER_DIED}

    # -- transitions ----------------------------------------------------------------------------

    def claim(self, pid: int) -> bool:
        """A runner takes a Queued run (Preparing); False when the run is not Queued (another
        runner took it, or it ended): that runner must leave the run alone."""
        with self._locked() as record:
            if record.get("status") != QUEUED:
                return False
            record.update(status=PREPARING, runner_pid=pid)
            return True

    def preparing(self, **facts: Any) -> dict[str, Any]:
        """The flow has started: snapshot, environment and nodes come next."""
        return self._move(PREPARING, **facts)

    def running(self, **facts: Any) -> dict[str, Any]:
        """The job's processes (or a sweep's trials) have started."""
        return self._move(RUNNING, queue_reason=None, **facts)

    def waiting(self, reason: str | None) -> dict[str, Any]:
        """A scheduler holds the run's nodes back (Queued, with its reason), or, with None,
        has given them (Preparing again, until the processes start)."""
        if reason is None:
            return self._move(PREPARING, queue_reason=None)
        return self._move(QUEUED, queue_reason=reason)

    def note(self, **facts: Any) -> dict[str, Any]:
        """Facts learned on the way (steps, hosts, hashes); never the status."""
        with self._locked() as record:
            record.update(facts)
            return record

    def note_if_room(self, **facts: Any) -> bool:
        """Facts a view keeps (where the run is in Prefect), which may be lost: written only
        where the disk has room, never from the run's reserve (that is for its status).
        False when they were not written."""
        try:
            with self._locked(use_reserve=False) as record:
                record.update(facts)
            return True
        except StorageError:
            return False

    def settle(self, outcome: str, **facts: Any) -> dict[str, Any]:
        """The flow's result, with the final facts. The status follows when the run ends."""
        return self.note(outcome=outcome, **facts)

    def end(self) -> dict[str, Any]:
        """The run is over: its status becomes the settled outcome (Failed if none was)."""
        with self._locked() as record:
            if record.get("status") not in TERMINAL_STATUSES:
                record["status"] = record.get("outcome") or FAILED
            return record

    def failed(self, error: str) -> dict[str, Any]:
        """Ended without a settled outcome (the runner itself failed, or was interrupted)."""
        return self._end(FAILED, error)

    def canceled(self, error: str = "canceled by the user") -> dict[str, Any]:
        """Ended by a cancel whose runner could not end it in time."""
        return self._end(CANCELED, error)

    def requeued(self, **facts: Any) -> dict[str, Any]:
        """An interrupted run (a sweep) starts again; its old outcome is forgotten."""
        with self._locked() as record:
            record.update(status=QUEUED, outcome=None, error=None, finished=None, **facts)
            return record

    def new_attempt(self) -> dict[str, Any]:
        """Prefect retried the run's flow run: the attempt that ended is moved, as it was,
        to attempts/<n>/ and the run starts again, Queued, as attempt n+1 (its record
        lists the earlier ones). Needs the run's lock (`lock_fd`)."""
        with self._locked() as record:
            number = record.get("attempt", 1)
            kept = self.paths.attempts / str(number)
            kept.mkdir(parents=True, mode=0o700)
            for name in RunPaths.ATTEMPT_FILES:
                if (self.paths.root / name).exists():
                    os.replace(self.paths.root / name, kept / name)
            for folder in (self.paths.logs, self.paths.outputs):
                folder.mkdir(mode=0o700)
            self.paths.output_log.touch(mode=0o600)
            earlier = [*record.get("attempts", []),
                       {"attempt": number, "status": record.get("status"),
                        "error": record.get("error"), "folder": str(kept)}]
            fresh = {key: record[key] for key in ("id", "experiment", "created", "workspace",
                                                  "compute_target", "kind") if key in record}
            record.clear()
            record.update(fresh, status=QUEUED, attempt=number + 1, attempts=earlier)
            return record

    # -- writing --------------------------------------------------------------------------------

    def _move(self, status: str, **facts: Any) -> dict[str, Any]:
        with self._locked() as record:
            record.update(facts)
            if record.get("status") not in TERMINAL_STATUSES:  # an ended run stays ended
                record["status"] = status
            return record

    def _end(self, status: str, error: str) -> dict[str, Any]:
        with self._locked() as record:
            if record.get("status") not in TERMINAL_STATUSES:
                record.update(status=status, error=error, finished=time.time())
            return record

    @contextlib.contextmanager
    def _locked(self, *, use_reserve: bool = True) -> Iterator[dict[str, Any]]:
        """Read, change and write back under a lock: writers in other processes and threads
        (a runner, a canceller, a sweep) never lose each other's changes. On a full disk the
        run's reserve is given up for the write (`use_reserve`)."""
        with self.paths.record_lock.open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            record = self.read()
            yield record
            try:
                write_json(self.paths.record, record)
            except OSError as exc:
                if not is_disk_full(exc) or not use_reserve or not self.paths.reserve.exists():
                    raise _cannot(self.paths.record, exc) from None
                # The disk is full: give up the run's reserve, so its status is written.
                self.paths.reserve.unlink()
                write_json(self.paths.record, record)
