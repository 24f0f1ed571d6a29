"""Which steps Prefect retries: those that failed for a reason that may pass by itself
(`TransientError`: a package index or an SSH host that did not answer), as often and as far
apart as the submitter's environment says (spec/retries.py)."""

from __future__ import annotations

from typing import Any

from prefect import Task

from tfsubmit.errors import TransientError
from tfsubmit.spec.retries import step_retries


def may_pass(_task: Task, _task_run: Any, state: Any) -> bool:
    """Prefect's retry_condition_fn: retry only what may pass by itself."""
    return isinstance(state.data, TransientError)


def retrying(task: Task) -> Task:
    """`task`, retried by Prefect on a TransientError (TFSUBMIT_STEP_RETRIES times, default
    2, 0 for never; TFSUBMIT_STEP_RETRY_DELAY seconds apart, default 10)."""
    retries, delay = step_retries()
    return task.with_options(retries=retries, retry_delay_seconds=delay,
                             retry_condition_fn=may_pass)
