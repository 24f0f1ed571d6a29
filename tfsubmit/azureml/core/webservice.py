"""azureml.core.webservice: Webservice (an endpoint), and the deployment configurations
of LocalWebservice and AciWebservice (served on a compute target of yours)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tfsubmit.azureml._notes import not_used


@dataclass
class DeploymentConfig:
    port: int | None = None
    auth_enabled: bool = False
    compute_target: Any = None
    tags: dict = field(default_factory=dict)
    description: str = ""


class LocalWebservice:
    @staticmethod
    def deploy_configuration(port: int | None = None, **ignored: Any) -> DeploymentConfig:
        return DeploymentConfig(port=port)


class AciWebservice:
    @staticmethod
    def deploy_configuration(cpu_cores: float | None = None, memory_gb: float | None = None,
                             tags: dict | None = None, description: str | None = None,
                             auth_enabled: bool = False, compute_target: Any = None,
                             port: int | None = None, **ignored: Any) -> DeploymentConfig:
        """An endpoint on a compute target of yours (`compute_target`, or Model.deploy's
        deployment_target; local by default). cpu_cores and memory_gb are not used."""
        if cpu_cores or memory_gb:
            not_used("AciWebservice's cpu_cores and memory_gb",
                     "the endpoint runs on your target as it is")
        return DeploymentConfig(port=port, auth_enabled=auth_enabled,
                                compute_target=compute_target, tags=tags or {},
                                description=description or "")


class Webservice:
    """`Webservice(workspace, name)`: an endpoint of the workspace."""

    def __init__(self, workspace: Any, name: str) -> None:
        from tfsubmit.api.serving import Endpoint

        self.workspace = workspace
        self.name = name
        self._endpoint = Endpoint(name, workspace=workspace.root)

    def __repr__(self) -> str:
        return f"Webservice(workspace={self.workspace!r}, name={self.name}, state={self.state})"

    @staticmethod
    def list(workspace: Any, **ignored: Any) -> list[Webservice]:
        return list(workspace.webservices.values())

    @property
    def state(self) -> str:
        return self._endpoint.state

    @property
    def scoring_uri(self) -> str:
        return self._endpoint.scoring_uri

    @property
    def swagger_uri(self) -> str:
        return self._endpoint.swagger_uri

    @property
    def compute_type(self) -> str:
        return self._endpoint.details()["target"]

    def wait_for_deployment(self, show_output: bool = False, timeout_sec: float = 900) -> None:
        self._endpoint.wait_for_deployment(show_output=show_output, timeout=timeout_sec)

    def run(self, input_data: Any) -> Any:
        return self._endpoint.run(input_data)

    def get_logs(self, num_lines: int = 5000, init: bool = False) -> str:
        return self._endpoint.get_logs(num_lines)

    def get_keys(self) -> tuple[str, str]:
        return self._endpoint.get_keys()

    def update(self, models: list[Any] | None = None, inference_config: Any = None,
               **ignored: Any) -> None:
        """Serve another model version or scoring script: started beside the running one,
        switched to once Healthy (no request refused). Returns once started; follow it
        with wait_for_deployment()."""
        model = models[0].id if models else None
        ic = inference_config
        self._endpoint.update(model, score_script=getattr(ic, "entry_script", None),
                              source_directory=getattr(ic, "source_directory", None),
                              pip_packages=ic.pip_packages() if ic is not None else (),
                              wait=False)

    def delete(self) -> None:
        self._endpoint.delete()
