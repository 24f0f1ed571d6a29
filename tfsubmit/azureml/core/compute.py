"""azureml.core.ComputeTarget: a target of the workspace (local, or one of targets.yaml)."""

from __future__ import annotations

from typing import Any

from tfsubmit.errors import TargetError


class ComputeTarget:
    """`ComputeTarget(workspace, name)`: `local` or a target of targets.yaml (SSH hosts,
    a Docker engine, a Slurm cluster); TargetError naming those there are otherwise."""

    def __init__(self, workspace: Any, name: str) -> None:
        from tfsubmit.targets.config import load_targets

        known = ["local", *load_targets(workspace.root)]
        if name not in known:
            raise TargetError(f"compute target {name!r} is not in {workspace.root}/targets.yaml"
                              f" (targets: {', '.join(known)}); add it there (see "
                              "docs/targets.md); Azure's AmlCompute clusters do not exist here")
        self.workspace = workspace
        self.name = name

    def __repr__(self) -> str:
        return f"ComputeTarget(name={self.name!r})"

    def wait_for_completion(self, show_output: bool = False, **ignored: Any) -> None:
        """Nothing to provision: your target is there already."""
