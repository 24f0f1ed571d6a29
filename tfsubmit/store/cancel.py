"""A run's cancel flag: its `cancel.requested` file, or a cancel from inside the process."""

from __future__ import annotations

import threading
import time

from tfsubmit.store.layout import RunPaths

DEFAULT_REASON = "canceled by the user"


class CancelFlag:
    """Set by the run's `cancel.requested` file (written by `Run.cancel()`, or by a sweep
    stopping one trial, with the reason as its text), or by `set()` (a Prefect cancel).
    Quacks like the threading.Event the supervisor and the environment builder poll."""

    def __init__(self, paths: RunPaths) -> None:
        self.file = paths.cancel_file
        self.folder = paths.root
        self._event = threading.Event()

    def is_set(self) -> bool:
        if not self._event.is_set() and (self.file.exists() or self.folder_gone()):
            self._event.set()
        return self._event.is_set()

    def folder_gone(self) -> bool:
        """The run's folder was deleted while it ran: nothing of it can be kept, so it
        stops as canceled runs do."""
        return not self.folder.exists()

    def set(self) -> None:
        self._event.set()

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._event.wait(min(0.1, left))
        return True

    def reason(self) -> str:
        """What the cancel file says (a sweep writes why it stopped a trial), else the user."""
        if self.folder_gone():
            return folder_gone(self.folder)
        try:
            return self.file.read_text().strip() or DEFAULT_REASON
        except FileNotFoundError:
            return DEFAULT_REASON


def folder_gone(folder) -> str:
    return (f"the run's folder {folder} was deleted while it ran: its processes were "
            "stopped, and nothing of it could be kept")


# The reason of a cancel set in Prefect (the UI, `prefect flow-run cancel`).
CANCELED_FROM_PREFECT = "canceled from Prefect (the UI or the API)"


def request_cancel(paths: RunPaths, reason: str = "") -> None:
    """Ask run `paths` to stop (its runner, wherever it is, polls for this file)."""
    paths.cancel_file.write_text(reason)


def withdraw_cancel(paths: RunPaths) -> None:
    paths.cancel_file.unlink(missing_ok=True)
