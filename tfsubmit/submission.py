"""The state one submission's tasks share: where the run lives, its log, its cancel flag."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tfsubmit.errors import TfsubmitError
from tfsubmit.runlog import RunLog
from tfsubmit.workspace import RunPaths, Workspace, update_record


class CancelFlag:
    """One run's cancel: its `cancel.requested` file (written by `Run.cancel()`, or by a sweep
    stopping one trial), or `set()` (a Prefect cancel). Quacks like the threading.Event the
    supervisor and the environment builder poll."""

    def __init__(self, flag_file: Path) -> None:
        self.file = flag_file
        self._event = threading.Event()

    def is_set(self) -> bool:
        if not self._event.is_set() and self.file.exists():
            self._event.set()
        return self._event.is_set()

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


class RunCanceled(TfsubmitError):
    """The user canceled the run before or while it ran."""


@dataclass
class Submission:
    workspace: Workspace
    run_id: str
    experiment: str
    paths: RunPaths
    log: RunLog
    target: Any = None  # the compute target, connected once for the whole submission
    artifacts: Any = None  # tasks.progress.RunArtifacts: the run's live Prefect artifacts
    cancel: CancelFlag = field(init=False)

    def __post_init__(self) -> None:
        self.cancel = CancelFlag(self.paths.root / "cancel.requested")

    def check_canceled(self) -> None:
        if self.cancel.is_set():
            raise RunCanceled(self.cancel_reason())

    def cancel_reason(self) -> str:
        """What the cancel file says (a sweep writes why it stopped a trial), else the user."""
        try:
            return self.cancel.file.read_text().strip() or "canceled by the user"
        except FileNotFoundError:
            return "canceled by the user"

    def record(self, **changes) -> dict:
        return update_record(self.paths, **changes)
