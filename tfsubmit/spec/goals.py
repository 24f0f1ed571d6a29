"""Goals: whether a smaller or a larger value of a metric is better."""

from __future__ import annotations

import math

from tfsubmit.errors import JobSpecError

GOALS = ("minimize", "maximize")


def check_goal(goal: str) -> str:
    if goal not in GOALS:
        raise JobSpecError(f"goal: {goal!r} is not one of {', '.join(GOALS)}")
    return goal


def ranked(value: float | None) -> bool:
    """Whether a value can be ranked: NaN and infinities never win (a loss of NaN is a
    diverged run, not the smallest loss)."""
    return value is not None and math.isfinite(value)


def better(value: float, than: float | None, goal: str) -> bool:
    """Strictly better for the goal; a finite value beats nothing and beats NaN or an
    infinity; NaN or an infinity beats nothing."""
    check_goal(goal)
    if not ranked(value):
        return False
    if not ranked(than):
        return True
    return value < than if goal == "minimize" else value > than


def worse(value: float, than: float, goal: str) -> bool:
    """Strictly worse for the goal."""
    return value > than if goal == "minimize" else value < than


def best(values: list[float], goal: str) -> float:
    """The best finite value; NaN when there is none."""
    finite = [value for value in values if ranked(value)]
    if not finite:
        return math.nan
    return min(finite) if goal == "minimize" else max(finite)
