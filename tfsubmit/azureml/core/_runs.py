"""The submitting side's runs with Azure ML v1's extra names (imports tfsubmit.api)."""

from __future__ import annotations

import json
import math
from typing import Any

from tfsubmit.api.runs import Run as _Run
from tfsubmit.api.runs import SweepRun as _SweepRun
from tfsubmit.errors import RunNotFoundError


class AzureRun(_Run):
    """tfsubmit's Run, with Azure's `experiment`, `register_model` returning a Model, and
    `get_hyperparameters` for a sweep's trial."""

    def __init__(self, experiment: Any, run_id: str) -> None:
        super().__init__(run_id, workspace=experiment.workspace.root)
        self._experiment = experiment
        if not self.paths.root.exists():
            raise RunNotFoundError(f"experiment {experiment.name!r} has no run {run_id!r}")

    @property
    def experiment(self) -> Any:  # Azure's Run.experiment is the Experiment
        return self._experiment

    def register_model(self, model_name: str, model_path: str = "outputs", tags=None,
                       properties=None, description: str | None = None, **ignored: Any):
        from tfsubmit.azureml.core.model import Model

        info = super().register_model(model_name, model_path, tags=tags,
                                      properties=properties, description=description or "")
        return Model(self._experiment.workspace, info["name"], version=info["version"])

    def get_hyperparameters(self) -> dict[str, Any]:
        """A trial's sampled values (Azure: the run's hyperparameters)."""
        return dict(self.record.read().get("params") or {})


class HyperDriveRun(_SweepRun):
    """A HyperDrive run: a tfsubmit sweep, read with Azure's names."""

    def __init__(self, experiment: Any, run_id: str, hyperdrive_config: Any = None) -> None:
        super().__init__(run_id, workspace=experiment.workspace.root)
        self._experiment = experiment
        self.hyperdrive_config = hyperdrive_config

    @property
    def experiment(self) -> Any:
        return self._experiment

    def _child(self, run_id: str) -> AzureRun:
        return AzureRun(self._experiment, run_id)

    def get_children(self) -> list[AzureRun]:
        return [self._child(t["run_id"]) for t in
                sorted(self.get_trials(), key=lambda t: t["trial"])]

    def get_best_run_by_primary_metric(self, include_failed: bool = True,
                                       include_canceled: bool = True,
                                       include_resume_from_runs: bool = True) -> AzureRun | None:
        best = self._record().get("best_trial")
        return self._child(best) if best else None

    def get_children_sorted_by_primary_metric(self, top: int = 0, reverse: bool = False,
                                              discard_no_metric: bool = False
                                              ) -> list[dict[str, Any]]:
        """[{run_id, hyperparameters, best_primary_metric, status}], best first (reverse:
        worst first); top > 0 keeps that many."""
        rows = []
        for trial in self.get_trials():  # best first already (the tuner ranks them)
            value = trial.get("value")
            if discard_no_metric and (value is None or isinstance(value, float)
                                      and math.isnan(value)):
                continue
            rows.append({"run_id": trial["run_id"],
                         "hyperparameters": json.dumps(trial.get("params") or {}),
                         "best_primary_metric": value, "status": trial.get("status")})
        if reverse:
            rows.reverse()
        return rows[:top] if top else rows

    def get_hyperparameters(self) -> dict[str, str]:
        """{run_id: the trial's values as JSON}, as Azure gives them."""
        return {t["run_id"]: json.dumps(t.get("params") or {}) for t in self.get_trials()}

    def get_metrics(self, name: str | None = None, *, task: str | None = None,
                    recursive: bool = False) -> dict[str, Any]:
        if recursive:
            return {child.id: child.get_metrics(name) for child in self.get_children()}
        return super().get_metrics(name, task=task)


def submitted_run(experiment: Any, run_id: str) -> AzureRun | HyperDriveRun:
    run = AzureRun(experiment, run_id)
    if run.record.read().get("kind") == "sweep":
        return HyperDriveRun(experiment, run_id)
    return run
