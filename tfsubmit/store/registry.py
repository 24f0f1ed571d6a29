"""The workspace's model registry: promoted models, one numbered version per promotion.

    <workspace>/models/<experiment>/<version>/   a copy of the run's outputs/
    <workspace>/models/<experiment>/<version>/model.json
        {version, run_id, metric, value, goal, metrics, promoted, flow_run_id}

Versions count up from 1 and are never overwritten.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from tfsubmit.errors import TfsubmitError
from tfsubmit.runtime.metrics import read_metrics
from tfsubmit.spec.goals import better
from tfsubmit.store.layout import Workspace, read_json, write_json
from tfsubmit.store.record import COMPLETED


def last_values(ws: Workspace, run_id: str) -> dict[str, float]:
    """The last value of each metric the run logged."""
    metrics = read_metrics([ws.paths_of(run_id).metrics])
    return {name: values[-1] for name, values in metrics.items()}


def best_earlier(ws: Workspace, experiment: str, metric: str, goal: str,
                 exclude: str) -> tuple[str, float] | None:
    """The experiment's earlier completed run with the best final `metric`."""
    best = None
    for record in ws.list_runs(experiment):
        if record["id"] == exclude or record.get("status") != COMPLETED:
            continue
        value = last_values(ws, record["id"]).get(metric)
        if value is not None and (best is None or better(value, best[1], goal)):
            best = (record["id"], value)
    return best


class ModelRegistry:
    def __init__(self, workspace: Workspace) -> None:
        self.root = workspace.models

    def versions(self, experiment: str) -> list[dict[str, Any]]:
        """Promoted versions of the experiment's model, oldest first."""
        folder = self.root / experiment
        found = [read_json(path / "model.json") for path in folder.iterdir()
                 if path.name.isdigit()] if folder.is_dir() else []
        return sorted((v for v in found if v), key=lambda v: v["version"])

    def latest(self, experiment: str) -> dict[str, Any] | None:
        versions = self.versions(experiment)
        return versions[-1] if versions else None

    def path(self, experiment: str, version: int) -> Path:
        return self.root / experiment / str(version)

    def promote(self, experiment: str, *, run_id: str, outputs: Path, metric: str, value: float,
                goal: str, metrics: dict[str, float], flow_run_id: str | None = None
                ) -> dict[str, Any]:
        """Copy a run's outputs in as the next version; returns its model.json."""
        if not outputs.is_dir() or not any(outputs.iterdir()):
            raise TfsubmitError(f"run {run_id} has no outputs to promote ({outputs} is empty); "
                                "save the model under the run's outputs/ folder")
        (self.root / experiment).mkdir(parents=True, exist_ok=True)
        version = max((v["version"] for v in self.versions(experiment)), default=0) + 1
        staging = self.root / experiment / f".{version}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(outputs, staging)
        info = {"version": version, "experiment": experiment, "run_id": run_id, "metric": metric,
                "value": value, "goal": goal, "metrics": metrics, "promoted": time.time(),
                "flow_run_id": flow_run_id}
        write_json(staging / "model.json", info)
        staging.rename(self.path(experiment, version))  # whole, or not at all
        return info
