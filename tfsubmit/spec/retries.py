"""How often, and how far apart, a step that failed for a reason that may pass by itself is
retried: the submitter's TFSUBMIT_STEP_RETRIES and TFSUBMIT_STEP_RETRY_DELAY."""

from __future__ import annotations

import os
from collections.abc import Mapping

from tfsubmit.errors import JobSpecError

RETRIES_ENV = "TFSUBMIT_STEP_RETRIES"
DELAY_ENV = "TFSUBMIT_STEP_RETRY_DELAY"
DEFAULT_RETRIES = 2
DEFAULT_DELAY = 10.0


def step_retries(env: Mapping[str, str] = os.environ) -> tuple[int, float]:
    """(retries, seconds between them); a bad value is a JobSpecError naming the variable."""
    return (int(_number(env, RETRIES_ENV, DEFAULT_RETRIES, "retries", whole=True)),
            _number(env, DELAY_ENV, DEFAULT_DELAY, "seconds", whole=False))


def _number(env: Mapping[str, str], name: str, default: float, unit: str, *,
            whole: bool) -> float:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text) if whole else float(text)
    except ValueError:
        value = -1
    if not 0 <= value < float("inf"):
        raise JobSpecError(f"{name}={text!r}: give a {'whole ' if whole else ''}number of "
                           f"{unit}, 0 or more (or unset it: {default:g})")
    return value
