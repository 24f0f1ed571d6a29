"""Reading a job's metrics while it runs, for whoever shows them live (the Prefect UI)."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from pathlib import Path

from tfsubmit.runtime.metrics import read_records

INTERVAL_SECONDS = 1.0
# The metric files' lines, every task's (runtime.metrics.read_records).
Metrics = list[dict]


class MetricsWatcher:
    """A thread that reads the metric files every second and hands them to `publish`.

    The thread runs in a copy of the starting thread's context, so `publish` sees what the
    caller sees (Prefect's run context: artifacts attach to the right flow run).
    """

    def __init__(self, files: Callable[[], list[Path]], publish: Callable[[Metrics], None],
                 warn: Callable[[str], None]) -> None:
        self.files = files
        self.publish = publish
        self.warn = warn
        self._stop = threading.Event()
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._loop,), daemon=True,
                                        name="tfsubmit-progress")

    def __enter__(self) -> MetricsWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        warned = False
        while not self._stop.wait(INTERVAL_SECONDS):
            try:
                self.publish(read_records(sorted(self.files())))
            except Exception as exc:  # a view missing an update must never fail the job
                if not warned:
                    self.warn(f"could not update the progress artifacts: {exc!r}")
                    warned = True
