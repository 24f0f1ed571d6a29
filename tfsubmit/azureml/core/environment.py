"""azureml.core.Environment: what a job's (or an endpoint's) Python environment holds."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tfsubmit.azureml._notes import not_used
from tfsubmit.errors import JobSpecError


def nearest_framework(major: int, minor: int) -> str:
    """The supported TensorFlow nearest to major.minor."""
    from tfsubmit.spec.job import NEWEST_FRAMEWORK, OLDEST_FRAMEWORK

    wanted = max(OLDEST_FRAMEWORK, min(NEWEST_FRAMEWORK, (major, minor)))
    return "{}.{}".format(*wanted)


class Environment:
    """An environment: TensorFlow's version, pip and conda packages, GPU or not.
    tfsubmit builds it (once, cached) where the job runs."""

    def __init__(self, name: str = "tfsubmit") -> None:
        self.name = name
        self.framework_version: str | None = None
        self.pip_packages: list[str] = []
        self.conda_packages: list[str] = []
        self.use_gpu = False
        self.version = "1"

    def __repr__(self) -> str:
        return (f"Environment(name={self.name!r}, tensorflow={self.framework_version}, "
                f"pip={self.pip_packages}, conda={self.conda_packages})")

    @classmethod
    def get(cls, workspace: Any, name: str, version: str | None = None) -> Environment:
        """Azure's curated TensorFlow environments by name ("AzureML-TensorFlow-2.3-GPU",
        "AzureML-tensorflow-2.4-ubuntu18.04-py37-cuda11-gpu", ...): the nearest supported
        TensorFlow, GPU when the name says so."""
        match = re.search(r"tensorflow-(\d+)\.(\d+)", name, re.IGNORECASE)
        if not match:
            raise JobSpecError(f"Environment.get: {name!r} is not one of Azure's curated "
                               "TensorFlow environments (AzureML-TensorFlow-2.x-...); build "
                               "one with Environment.from_pip_requirements or "
                               "from_conda_specification")
        env = cls(name)
        env.framework_version = nearest_framework(int(match[1]), int(match[2]))
        if env.framework_version != f"{match[1]}.{match[2]}":
            not_used(f"TensorFlow {match[1]}.{match[2]} of {name}",
                     f"the nearest supported, {env.framework_version}, is used")
        env.use_gpu = "gpu" in name.lower()
        return env

    @classmethod
    def from_pip_requirements(cls, name: str, file_path: str | Path) -> Environment:
        path = Path(file_path)
        if not path.is_file():
            raise JobSpecError(f"from_pip_requirements: {str(path)!r} is not a file")
        env = cls(name)
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                env._add_pip(line)
        return env

    @classmethod
    def from_conda_specification(cls, name: str, file_path: str | Path) -> Environment:
        """A conda environment file: its `pip:` list becomes pip packages, its conda
        packages conda packages (python and pip themselves are tfsubmit's)."""
        import yaml

        path = Path(file_path)
        if not path.is_file():
            raise JobSpecError(f"from_conda_specification: {str(path)!r} is not a file")
        data = yaml.safe_load(path.read_text()) or {}
        env = cls(name)
        for dep in data.get("dependencies") or []:
            if isinstance(dep, dict):
                for pip in dep.get("pip") or []:
                    env._add_pip(str(pip))
            elif not re.match(r"(python|pip)\b", str(dep)):
                env.conda_packages.append(str(dep))
        return env

    def _add_pip(self, requirement: str) -> None:
        """A TensorFlow pin sets the version (the nearest supported); others are packages."""
        match = re.match(r"tensorflow(-cpu|-gpu)?\s*[=~<>]=?\s*(\d+)\.(\d+)", requirement,
                         re.IGNORECASE)
        if match:
            self.framework_version = nearest_framework(int(match[2]), int(match[3]))
            self.use_gpu = self.use_gpu or match[1] == "-gpu"
        elif re.match(r"(azureml|azureml-\S+|tensorflow(-cpu|-gpu)?)\s*($|[=<>~])",
                      requirement, re.IGNORECASE):
            not_used(f"pip package {requirement!r}", "tfsubmit provides it")
        else:
            self.pip_packages.append(requirement)

    def register(self, workspace: Any) -> Environment:
        return self

    def job_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"pip_packages": list(self.pip_packages),
                                  "conda_packages": list(self.conda_packages),
                                  "use_gpu": self.use_gpu}
        if self.framework_version:
            fields["framework_version"] = self.framework_version
        return fields
