"""The merged run log: one file every reader tails, optionally forwarded to Prefect."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

Forward = Callable[[str], None]


class StderrLine(str):
    """A line a process wrote to its standard error: targets that keep a process's two
    streams apart yield these, and the run log forwards them as such (Prefect's log shows
    them at WARNING); `output.log` holds both streams' lines alike."""


class RunLog:
    """Appends tagged lines to `output.log`; `forward` also sends each to the Prefect run log."""

    def __init__(self, path: Path, forward: Forward | None = None) -> None:
        self.path = path
        self.forward = forward
        self._lock = threading.Lock()
        self._file = path.open("a", buffering=1)
        self.lost: OSError | None = None  # why lines could not be written (disk full)

    def event(self, message: str) -> None:
        """A line from tfsubmit itself (pipeline progress, errors)."""
        for text in message.splitlines() or [""]:
            self.write(f"[tfsubmit] {text}")

    def line(self, tag: str, text: str) -> None:
        """A line one of the job's processes printed (a StderrLine: to its stderr)."""
        line = f"{tag} {text}"
        self.write(StderrLine(line) if isinstance(text, StderrLine) else line)

    def write(self, line: str) -> None:
        with self._lock:
            try:
                self._file.write(line + "\n")
            except OSError as exc:  # a full disk: the job goes on, its record says why
                if self.lost is None:
                    self.lost = exc
                    self._file = open(os.devnull, "w")  # noqa: SIM115
        if self.forward is not None:
            self.forward(line)

    def close(self) -> None:
        try:
            self._file.close()
        except OSError:
            pass
