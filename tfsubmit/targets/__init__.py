"""Compute targets decide where and how processes run; they never import launchers or flows.

Every target offers the same small protocol: `provision(run_dir) -> Node`,
`start(spec) -> handle` (handle: `lines()`, `poll()`, `signal_group(sig)`), `leftovers(run_id)`.
"""

from __future__ import annotations

from tfsubmit.errors import TargetError
from tfsubmit.targets.local import LocalTarget

KNOWN_TYPES = ("local",)


def get_target(name: str) -> LocalTarget:
    """The compute target called `name`."""
    if name == "local":
        return LocalTarget()
    raise TargetError(
        f"compute_target: unknown target {name!r}; known targets: local "
        "(SSH and Docker targets are not supported yet)"
    )


__all__ = ["KNOWN_TYPES", "LocalTarget", "get_target"]
