"""azureml.core.Workspace: a tfsubmit workspace (a folder: runs, models, endpoints)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tfsubmit.azureml._notes import not_used
from tfsubmit.store.layout import Workspace as _Workspace


class Workspace:
    """Azure ML's Workspace: here a tfsubmit workspace folder (`path`, else
    TFSUBMIT_WORKSPACE, else ~/.tfsubmit). The cloud arguments are accepted and not used."""

    def __init__(self, subscription_id: str | None = None, resource_group: str | None = None,
                 workspace_name: str | None = None, auth: Any = None, *,
                 path: str | Path | None = None, **cloud: Any) -> None:
        if subscription_id or resource_group or workspace_name or auth or cloud:
            not_used("Workspace's Azure arguments (subscription_id, resource_group, "
                     "workspace_name, auth, ...)",
                     "runs, models and endpoints stay in this machine's tfsubmit workspace")
        self._ws = _Workspace(path)
        self.name = workspace_name or self._ws.root.name

    @classmethod
    def from_config(cls, path: str | Path | None = None, auth: Any = None,
                    _logger: Any = None, _file_name: str | None = None) -> Workspace:
        """The default tfsubmit workspace (Azure's config.json is not read)."""
        not_used("Workspace.from_config's config.json",
                 "the tfsubmit workspace is TFSUBMIT_WORKSPACE or ~/.tfsubmit")
        return cls()

    @classmethod
    def get(cls, name: str, **cloud: Any) -> Workspace:
        return cls(workspace_name=name, **cloud)

    @property
    def root(self) -> Path:
        return self._ws.root

    def __repr__(self) -> str:
        return f"Workspace.create(name='{self.name}', path='{self.root}')"

    @property
    def models(self) -> dict[str, Any]:
        """The latest version of each registered model, by name."""
        from tfsubmit.azureml.core.model import Model
        from tfsubmit.store.registry import ModelRegistry

        return {name: Model(self, name) for name in ModelRegistry(self._ws).names()}

    @property
    def webservices(self) -> dict[str, Any]:
        from tfsubmit.azureml.core.webservice import Webservice
        from tfsubmit.serving.endpoints import Endpoints

        return {name: Webservice(self, name) for name in Endpoints(self._ws).names()}

    @property
    def compute_targets(self) -> dict[str, Any]:
        """`local` and every target of targets.yaml, by name."""
        from tfsubmit.azureml.core.compute import ComputeTarget
        from tfsubmit.targets.config import load_targets

        names = ["local", *load_targets(self.root)]
        return {name: ComputeTarget(self, name) for name in names}

    @property
    def experiments(self) -> dict[str, Any]:
        from tfsubmit.azureml.core.experiment import Experiment

        names = sorted({r.get("experiment", "default") for r in self._ws.list_runs(None)})
        return {name: Experiment(self, name) for name in names}
