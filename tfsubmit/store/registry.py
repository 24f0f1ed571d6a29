"""The workspace's model registry: named models, numbered versions.

    <workspace>/models/<name>/<version>/model.json
        {name, version, run_id, model_path, tags, properties, description, registered, ...}
    <workspace>/models/<name>/<version>/<model_path>   the registered file or folder

`register` keeps a file or folder under its own name (as Azure ML lays a model out under
AZUREML_MODEL_DIR); the retrain flow's `promote` keeps a run's outputs/ as the version's
folder itself (model_path "."), named after the experiment. Versions count up from 1 and
are never overwritten; a version appears whole or not at all.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import Any

from tfsubmit.errors import JobSpecError, ModelNotFoundError, TfsubmitError
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


# Azure ML's rule for model names: letters, digits, '-', '_' and '.', up to 255.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")


def parse_reference(text: str) -> tuple[str, int | None]:
    """`NAME` or `NAME:VERSION` (a positive whole number)."""
    name, _, version = text.partition(":")
    if version and not version.isdigit() or version == "0":
        raise JobSpecError(f"model {text!r}: the version after ':' must be a positive whole "
                           "number (NAME:3), or left out for the latest")
    return name, int(version) if version else None


class ModelRegistry:
    def __init__(self, workspace: Workspace) -> None:
        self.root = workspace.models

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and self.versions(p.name)) if self.root.is_dir() else []

    def get(self, name: str, version: int | None = None) -> dict[str, Any]:
        """A version's model.json (the latest without `version`), or ModelNotFoundError
        naming what there is."""
        versions = self.versions(name) if _NAME.fullmatch(name) else []
        if not versions:
            known = ", ".join(self.names()) or "none yet"
            raise ModelNotFoundError(f"model {name!r} is not registered (registered: {known}); "
                                     "register one with run.register_model(...) or "
                                     "Model.register(...)")
        if version is None:
            return versions[-1]
        for info in versions:
            if info["version"] == version:
                return info
        raise ModelNotFoundError(
            f"model {name!r} has no version {version} (versions: "
            f"{', '.join(str(v['version']) for v in versions)})")

    def model_dir(self, info: dict[str, Any]) -> Path:
        """The version's folder: what AZUREML_MODEL_DIR names."""
        return self.path(info.get("name") or info["experiment"], info["version"])

    def model_path(self, info: dict[str, Any]) -> Path:
        """The registered file or folder itself."""
        return self.model_dir(info) / info.get("model_path", ".")

    def register(self, name: str, source: Path, *, run_id: str | None = None,
                 tags: dict[str, str] | None = None,
                 properties: dict[str, str] | None = None, description: str = "",
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Copy the file or folder `source` in as the model's next version."""
        if not _NAME.fullmatch(name):
            raise JobSpecError(f"model_name {name!r}: use letters, digits, '-', '_' and '.' "
                               "(up to 255, starting with a letter or digit)")
        if not source.exists():
            raise JobSpecError(f"model_path {str(source)!r} does not exist; give a file or "
                               "folder the run wrote (e.g. outputs/model)")
        if not (source.is_file() or source.is_dir()) or source.is_dir() \
                and not any(source.iterdir()):
            raise JobSpecError(f"model_path {str(source)!r} is empty or not a file or folder")
        info = {"name": name, "run_id": run_id, "model_path": source.name,
                "tags": {str(k): str(v) for k, v in (tags or {}).items()},
                "properties": {str(k): str(v) for k, v in (properties or {}).items()},
                "description": description or "", **(extra or {})}

        def fill(staging: Path) -> None:
            if source.is_dir():
                shutil.copytree(source, staging / source.name, symlinks=False)
            else:
                shutil.copy2(source, staging / source.name)

        return self._add(name, info, fill)

    def _add(self, name: str, info: dict[str, Any], fill) -> dict[str, Any]:
        """The next version: filled in a hidden folder, renamed in whole."""
        (self.root / name).mkdir(parents=True, exist_ok=True)
        while True:
            version = max((v["version"] for v in self.versions(name)), default=0) + 1
            staging = self.root / name / f".{version}.{time.monotonic_ns()}.partial"
            staging.mkdir()
            try:
                fill(staging)
                info = {**info, "version": version, "registered": time.time()}
                write_json(staging / "model.json", info)
                try:
                    staging.rename(self.path(name, version))  # whole, or not at all
                    return info
                except OSError:  # another registration took this version first
                    continue
            finally:
                shutil.rmtree(staging, ignore_errors=True)

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
                goal: str, metrics: dict[str, float], flow_run_id: str | None = None,
                job: dict[str, Any] | None = None) -> dict[str, Any]:
        """Copy a run's outputs in as the next version; returns its model.json."""
        if not outputs.is_dir() or not any(outputs.iterdir()):
            raise TfsubmitError(f"run {run_id} has no outputs to promote ({outputs} is empty); "
                                "save the model under the run's outputs/ folder")
        info = {"name": experiment, "experiment": experiment, "run_id": run_id,
                "model_path": ".", "metric": metric, "value": value, "goal": goal,
                "metrics": metrics, "promoted": time.time(), "flow_run_id": flow_run_id,
                "tags": {}, "properties": {}, "description": f"promoted by retrain: {metric}",
                "job": job or {}}

        def fill(staging: Path) -> None:
            shutil.copytree(outputs, staging, dirs_exist_ok=True)

        return self._add(experiment, info, fill)
