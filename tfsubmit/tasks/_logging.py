"""Send the run log's lines to the current Prefect task's log as well."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from prefect import get_run_logger

from tfsubmit.store.runlog import RunLog


@contextlib.contextmanager
def forwarded(log: RunLog) -> Iterator[RunLog]:
    previous = log.forward
    log.forward = get_run_logger().info
    try:
        yield log
    finally:
        log.forward = previous
