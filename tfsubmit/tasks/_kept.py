"""What each step's body returned, kept in this process: should the Prefect API stop
answering between a body's end and the report of its state, the flow still has the result
and goes on without Prefect (see flows/submit.py) instead of losing a finished job."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
MISSING = object()
_STARTED: set[tuple[str, str]] = set()
_RESULTS: dict[tuple[str, str], Any] = {}


def kept(step: str) -> Callable[[F], F]:
    """Keep the body's result, keyed by its submission's run id and `step`."""

    def wrap(body: F) -> F:
        @functools.wraps(body)
        def keeping(sub, *args, **kwargs):
            key = (sub.run_id, step)
            _STARTED.add(key)
            value = body(sub, *args, **kwargs)
            _RESULTS[key] = value
            return value

        return keeping  # type: ignore[return-value]

    return wrap


def result_of(run_id: str, step: str) -> tuple[bool, Any]:
    """(whether the body started, what it returned or MISSING)."""
    key = (run_id, step)
    return key in _STARTED, _RESULTS.get(key, MISSING)


def forget(run_id: str) -> None:
    for key in [k for k in _STARTED if k[0] == run_id]:
        _STARTED.discard(key)
        _RESULTS.pop(key, None)
