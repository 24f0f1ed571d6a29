"""Compute targets decide where and how processes run; they never import launchers or flows.

Every target offers the same small protocol: `start(spec) -> handle` (handle: `lines()`,
`poll()`, `signal_group(sig)`), `leftovers(run_id) -> [(host, pid)]`, `kill(...)`,
`collect(node, dest)` and `close()`. `remote` says whether environments are built on the
target's hosts while provisioning (SSH) or here before it (local).
"""

from __future__ import annotations

from pathlib import Path

from tfsubmit.errors import TargetError
from tfsubmit.targets.local import LocalTarget


def get_target(name: str, workspace_root: Path):
    """The compute target called `name`: `local`, one in targets.yaml, or a Prefect Block."""
    if name == "local":
        return LocalTarget()
    from tfsubmit.targets.config import load_targets, targets_file

    targets = load_targets(workspace_root)
    config = targets.get(name)
    if config is None:
        from tfsubmit.targets.block import load_block_target

        config = load_block_target(name, workspace_root)
    if config is None:
        known = ", ".join(["local", *sorted(targets)])
        raise TargetError(
            f"compute_target: unknown target {name!r}; known targets: {known} "
            f"(define targets in {targets_file(workspace_root)}, or save a "
            f"tfsubmit-ssh-target block named {name!r} in Prefect)"
        )
    if config.type == "docker":
        from tfsubmit.targets.docker import DockerTarget

        return DockerTarget(name, config)
    from tfsubmit.targets.ssh import SSHTarget

    return SSHTarget(name, config)


__all__ = ["LocalTarget", "get_target"]
