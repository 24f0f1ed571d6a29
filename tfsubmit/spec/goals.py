"""Goals: whether a smaller or a larger value of a metric is better."""

from __future__ import annotations

from tfsubmit.errors import JobSpecError

GOALS = ("minimize", "maximize")


def check_goal(goal: str) -> str:
    if goal not in GOALS:
        raise JobSpecError(f"goal: {goal!r} is not one of {', '.join(GOALS)}")
    return goal


def better(value: float, than: float | None, goal: str) -> bool:
    """Strictly better for the goal; anything beats nothing."""
    if than is None:
        return True
    return value < than if check_goal(goal) == "minimize" else value > than


def worse(value: float, than: float, goal: str) -> bool:
    """Strictly worse for the goal."""
    return value > than if goal == "minimize" else value < than


def best(values: list[float], goal: str) -> float:
    return min(values) if goal == "minimize" else max(values)
