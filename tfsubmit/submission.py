"""The state one submission's tasks share: where the run lives, its log, its cancel flag."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from tfsubmit.errors import TfsubmitError
from tfsubmit.runlog import RunLog
from tfsubmit.workspace import RunPaths, Workspace, update_record

# Set by the runner's SIGUSR1 handler (`Run.cancel()`); every step checks it.
CANCEL = threading.Event()


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
    cancel: threading.Event = field(default=CANCEL)

    def check_canceled(self) -> None:
        if self.cancel.is_set() or (self.paths.root / "cancel.requested").exists():
            self.cancel.set()
            raise RunCanceled("canceled by the user")

    def record(self, **changes) -> dict:
        return update_record(self.paths, **changes)
