"""Run a job's processes on a target: stream their lines, stop them all on failure, cancel
or timeout (TERM to each group, a grace period, then KILL), and check nothing is left."""

from __future__ import annotations

import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tfsubmit.errors import TfsubmitError
from tfsubmit.process import ProcessSpec
from tfsubmit.runlog import RunLog


class Handle(Protocol):
    spec: ProcessSpec
    pid: int

    def lines(self) -> Any: ...
    def poll(self) -> int | None: ...
    def signal_group(self, sig: int) -> None: ...


class Target(Protocol):
    def start(self, spec: ProcessSpec) -> Handle: ...
    def leftovers(self, run_id: str) -> list[tuple[str, int]]: ...
    def kill(self, processes: list[tuple[str, int]]) -> None: ...


@dataclass
class ProcessResult:
    role: str
    index: int
    host: str
    exit_code: int | None
    log_file: str


@dataclass
class Outcome:
    status: str  # Completed, Failed or Canceled
    reason: str | None
    results: list[ProcessResult] = field(default_factory=list)
    duration: float = 0.0

    def describe(self) -> str:
        return self.status + (f": {self.reason}" if self.reason else "")


def supervise(
    target: Target,
    specs: list[ProcessSpec],
    *,
    run_id: str,
    log: RunLog,
    log_dir: Path,
    cancel: threading.Event,
    max_seconds: float | None = None,
    grace_seconds: float = 10.0,
    on_started: Callable[[list[Handle]], None] = lambda handles: None,
    decides: Callable[[ProcessSpec], bool] = lambda spec: True,
) -> Outcome:
    """Start every spec, stream its output, and wait until all exit or one must stop them.

    The job has succeeded when every process that `decides` exits 0 (by default: all of
    them); the others (parameter servers, say) are then stopped. Any process failing fails
    the job and stops the rest.
    """
    lines: queue.Queue[tuple[int, str | None]] = queue.Queue()
    log_dir.mkdir(parents=True, exist_ok=True)
    files = [(log_dir / spec.log_name).open("a", buffering=1) for spec in specs]
    started = time.monotonic()
    handles: list[Handle] = []
    try:
        for spec in specs:
            handles.append(target.start(spec))
        on_started(handles)
        readers = [_reader(i, handle, lines) for i, handle in enumerate(handles)]
        deciding = [decides(h.spec) for h in handles]
        status, reason = _watch(handles, deciding, lines, files, log, cancel, started,
                                max_seconds)
        running = [h for h in handles if _poll(h) is None]
        if running:
            why = reason or "the job is done"
            log.event(f"stopping {len(running)} process(es): {why}")
            _stop(handles, grace_seconds)
        for reader in readers:
            reader.join(timeout=2.0)  # a helper that escaped the group may hold the pipe
        _drain(lines, handles, files, log)
        try:
            leftovers = target.leftovers(run_id)
            if leftovers:
                shown = ", ".join(f"{pid}@{host}" for host, pid in leftovers)
                log.event(f"killing {len(leftovers)} leftover process(es) of the run: {shown}")
                target.kill(leftovers)
        except TfsubmitError as exc:
            log.event(f"could not check for leftover processes: {exc}")
    finally:
        for handle in handles:  # never leave a group behind, even when tfsubmit itself fails
            if _poll(handle) is None:
                handle.signal_group(signal.SIGKILL)
        for file in files:
            file.close()
    results = [
        ProcessResult(h.spec.role, h.spec.index, h.spec.host, _poll(h), str(log_dir / s.log_name))
        for h, s in zip(handles, specs, strict=False)
    ]
    return Outcome(status, reason, results, time.monotonic() - started)


def _reader(index: int, handle: Handle, lines: queue.Queue) -> threading.Thread:
    def read() -> None:
        try:
            for line in handle.lines():
                lines.put((index, line))
        finally:
            lines.put((index, None))

    thread = threading.Thread(target=read, daemon=True, name=f"read-{handle.spec.tag}")
    thread.start()
    return thread


def _watch(handles, deciding, lines, files, log, cancel, started,
           max_seconds) -> tuple[str, str | None]:
    open_streams = len(handles)
    while True:
        open_streams -= _drain(lines, handles, files, log, wait=0.1)
        if cancel.is_set():
            return "Canceled", "canceled by the user"
        if max_seconds is not None and time.monotonic() - started > max_seconds:
            return "Failed", f"exceeded max_run_duration_seconds={max_seconds:g}"
        try:
            codes = [handle.poll() for handle in handles]
        except TfsubmitError as exc:  # a host stopped answering
            return "Failed", str(exc)
        for handle, code in zip(handles, codes, strict=True):
            if code not in (None, 0):
                what = f"signal {-code}" if code < 0 else f"exit code {code}"
                return "Failed", f"{handle.spec.tag.strip('[]')} failed with {what}"
        done = all(code == 0 for code, d in zip(codes, deciding, strict=True) if d)
        if done and any(code is None for code in codes):
            return "Completed", None  # the deciding processes are done; the rest are stopped
        if done and open_streams <= 0:
            return "Completed", None
        if done:
            # Exited, but a child may still hold the output pipe: give it a moment.
            _drain(lines, handles, files, log, wait=0.5)
            return "Completed", None


def _drain(lines, handles, files, log, *, wait: float = 0.0) -> int:
    """Write queued lines; returns how many streams ended."""
    ended = 0
    deadline = time.monotonic() + wait
    while True:
        timeout = max(0.0, deadline - time.monotonic())
        try:
            index, line = lines.get(timeout=timeout) if timeout else lines.get_nowait()
        except queue.Empty:
            return ended
        if line is None:
            ended += 1
            continue
        files[index].write(line + "\n")
        log.line(handles[index].spec.tag, line)
        deadline = time.monotonic()  # got something: empty the rest without waiting


def _lost(handle: Handle) -> bool:
    try:
        handle.poll()
    except TfsubmitError:
        return True
    return False


def _poll(handle: Handle) -> int | None:
    """The exit code, or None while running or unknowable (its host is lost)."""
    try:
        return handle.poll()
    except TfsubmitError:
        return None


def _stop(handles: list[Handle], grace_seconds: float) -> None:
    for handle in handles:
        if _poll(handle) is None:
            handle.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    reachable = [h for h in handles if not _lost(h)]
    while time.monotonic() < deadline and any(_poll(h) is None for h in reachable):
        time.sleep(0.05)
    for handle in handles:
        handle.signal_group(signal.SIGKILL)  # the group, even if its leader already exited
