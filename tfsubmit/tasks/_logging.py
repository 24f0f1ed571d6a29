"""Send the run log's lines to the current Prefect task's log as well, at a bounded rate.

Prefect gets at most LINES_PER_SECOND lines a second on average (bursts up to BURST): a
job that prints 10,000 lines a second would otherwise keep its flow run's process busy
shipping them long after it ended. Lines left out are counted and said in Prefect's log
(WARNING); the full log stays in the run's `output.log` (`tfsubmit logs RUN`). Lines that
read as errors (a traceback, an error from tfsubmit) go at ERROR, so the UI's filter finds
them; the rest of what a job's processes wrote to stderr at WARNING, their stdout at INFO.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Iterator

from prefect import get_run_logger

from tfsubmit.runtime.metrics import json_safe
from tfsubmit.store.runlog import RunLog, StderrLine

LINES_PER_SECOND = 200.0
BURST = 2000.0
# A job's traceback or exception line, or tfsubmit's own word of a failure.
_ERROR = re.compile(r"^\[[^\]]+\] (Traceback \(most recent call last\)|[\w.]*(Error|Exception)"
                    r"(: |$))|^\[tfsubmit\] .*(\bFailed\b|\bfailed\b|internal error)")


class CappedForward:
    """A RunLog `forward` into a Prefect logger, rate-capped (see the module)."""

    def __init__(self, logger: logging.LoggerAdapter, *, rate: float = LINES_PER_SECOND,
                 burst: float = BURST) -> None:
        self.logger = logger
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.stamp = time.monotonic()
        self.left_out = 0
        self._said = False
        self._lock = threading.Lock()

    def __call__(self, line: str) -> None:
        with self._lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens < 1:
                self.left_out += 1
                if not self._said:
                    self._said = True
                    self.logger.warning(
                        f"this run prints more than {self.rate:.0f} lines a second: Prefect's "
                        "log leaves lines out from here on; the full log is the run's "
                        "output.log (`tfsubmit logs RUN`)")
                return
            self.tokens -= 1
        level = (logging.ERROR if _ERROR.match(line)
                 else logging.WARNING if isinstance(line, StderrLine) else logging.INFO)
        self.logger.log(level, json_safe(line))

    def close(self) -> None:
        if self.left_out:
            self.logger.warning(f"{self.left_out} line(s) of this step were left out of "
                                "Prefect's log (rate cap); all are in the run's output.log")


@contextlib.contextmanager
def forwarded(log: RunLog) -> Iterator[RunLog]:
    previous = log.forward
    forward = CappedForward(get_run_logger())
    log.forward = forward
    try:
        yield log
    finally:
        log.forward = previous
        forward.close()
