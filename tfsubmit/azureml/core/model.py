"""azureml.core.model: Model (the registry) and InferenceConfig (how to serve it)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from tfsubmit.azureml._notes import not_used
from tfsubmit.errors import NotSupportedError


class InferenceConfig:
    """A scoring script (init, run) and its environment; no entry_script: TensorFlow
    Serving's REST API serves the model."""

    def __init__(self, entry_script: str | None = None, runtime: str | None = None,
                 conda_file: str | None = None, source_directory: str | None = None,
                 environment: Any = None, **ignored: Any) -> None:
        self.entry_script = entry_script
        self.source_directory = source_directory
        self.environment = environment
        if conda_file and environment is None:
            from tfsubmit.azureml.core.environment import Environment

            base = Path(source_directory or ".")
            self.environment = Environment.from_conda_specification("inference",
                                                                    base / conda_file)

    def pip_packages(self) -> list[str]:
        return list(self.environment.pip_packages) if self.environment is not None else []


class Model:
    """A registered model version: `Model(workspace, name, version=None)` (the latest
    without a version), or `Model(workspace, id="name:version")`."""

    def __init__(self, workspace: Any, name: str | None = None, id: str | None = None,
                 tags: Any = None, properties: Any = None, version: int | None = None,
                 **ignored: Any) -> None:
        from tfsubmit.store.registry import ModelRegistry, parse_reference

        if id:
            name, version = parse_reference(id)
        self.workspace = workspace
        self._registry = ModelRegistry(workspace._ws)
        self._info = self._registry.get(name, version)
        self.name = self._info["name"]
        self.version = self._info["version"]
        self.id = f"{self.name}:{self.version}"
        self.tags = dict(self._info.get("tags") or {})
        self.properties = dict(self._info.get("properties") or {})
        self.description = self._info.get("description") or ""
        self.run_id = self._info.get("run_id")
        self.created_time = self._info.get("registered")

    def __repr__(self) -> str:
        return f"Model(workspace={self.workspace!r}, name={self.name}, id={self.id}, " \
               f"version={self.version}, tags={self.tags})"

    @property
    def url(self) -> str:
        return str(self._registry.model_path(self._info))

    # -- registering and finding -----------------------------------------------------------

    @staticmethod
    def register(workspace: Any, model_path: str | Path, model_name: str, tags: Any = None,
                 properties: Any = None, description: str | None = None,
                 **ignored: Any) -> Model:
        """A file or folder of this machine as the next version of `model_name`."""
        from tfsubmit.store.registry import ModelRegistry

        info = ModelRegistry(workspace._ws).register(
            model_name, Path(model_path).expanduser().resolve(), tags=tags,
            properties=properties, description=description or "")
        print(f"Registering model {model_name}")
        return Model(workspace, info["name"], version=info["version"])

    @staticmethod
    def list(workspace: Any, name: str | None = None, tags: Any = None,
             properties: Any = None, latest: bool = False, **ignored: Any) -> list[Model]:
        from tfsubmit.store.registry import ModelRegistry

        registry = ModelRegistry(workspace._ws)
        found = []
        for each in [name] if name else registry.names():
            versions = registry.versions(each)
            for info in versions[-1:] if latest else versions:
                model = Model(workspace, info["name"], version=info["version"])
                if tags and not _matches(model.tags, tags):
                    continue
                found.append(model)
        return found

    @staticmethod
    def get_model_path(model_name: str, version: int | None = None,
                       _workspace: Any = None) -> str:
        """In a scoring script: the model's path under AZUREML_MODEL_DIR. Elsewhere: its
        path in the registry (of _workspace, or the default workspace)."""
        model_dir = os.environ.get("AZUREML_MODEL_DIR")
        if model_dir and _workspace is None:
            info = _model_json(Path(model_dir))
            if info.get("name") == model_name and version in (None, info.get("version")):
                return str(Path(model_dir) / info.get("model_path", "."))
        from tfsubmit.store.layout import Workspace as _Ws
        from tfsubmit.store.registry import ModelRegistry

        registry = ModelRegistry(_workspace._ws if _workspace is not None else _Ws())
        return str(registry.model_path(registry.get(model_name, version)))

    def download(self, target_dir: str | Path = ".", exist_ok: bool = False,
                 **ignored: Any) -> str:
        """Copy the model (its file or folder) into target_dir; returns its path there."""
        source = self._registry.model_path(self._info)
        target = Path(target_dir) / (source.name if self._info.get("model_path") != "."
                                     else self.name)
        if target.exists() and not exist_ok:
            raise FileExistsError(f"{target} exists; pass exist_ok=True to overwrite it")
        Path(target_dir).mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("model.json"))
        else:
            shutil.copy2(source, target)
        return str(target)

    # -- serving ------------------------------------------------------------------------------

    @staticmethod
    def deploy(workspace: Any, name: str, models: list[Model],
               inference_config: InferenceConfig | None = None,
               deployment_config: Any = None, deployment_target: Any = None,
               overwrite: bool = False, show_output: bool = False, **ignored: Any):
        """Serve `models` (one) as web service `name`: on deployment_target (a compute
        target name or ComputeTarget: local by default, a docker target by name). Returns
        at once; `service.wait_for_deployment(show_output=True)` follows it."""
        from tfsubmit.api.serving import deploy
        from tfsubmit.azureml.core.webservice import Webservice

        if len(models) != 1:
            raise NotSupportedError(f"Model.deploy: {len(models)} models given; an endpoint "
                                    "serves one model in this version")
        config = deployment_config
        target = deployment_target or getattr(config, "compute_target", None) or "local"
        target = target if isinstance(target, str) else target.name
        ic = inference_config or InferenceConfig()
        endpoint = deploy(
            name, models[0].id, workspace=workspace.root, score_script=ic.entry_script,
            source_directory=ic.source_directory, target=target,
            port=getattr(config, "port", None), auth=bool(getattr(config, "auth_enabled",
                                                                   False)),
            pip_packages=ic.pip_packages(), overwrite=overwrite, show_output=show_output,
            wait=False)
        service = Webservice(workspace, name)
        service._endpoint = endpoint
        return service


def _matches(own: dict[str, str], tags: Any) -> bool:
    for tag in tags:
        if isinstance(tag, (list, tuple)):
            if own.get(tag[0]) != tag[1]:
                return False
        elif tag not in own:
            return False
    return True


def _model_json(folder: Path) -> dict[str, Any]:
    import json

    try:
        return json.loads((folder / "model.json").read_text())
    except (OSError, ValueError):
        not_used("AZUREML_MODEL_DIR without model.json", "the registry is read instead")
        return {}
