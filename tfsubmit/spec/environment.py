"""What a job's Python environment holds, and what a built one is.

Standard library only: the host agent builds environments from an EnvironmentSpec on
machines that have nothing but Python 3.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pydantic is not on remote hosts
    from tfsubmit.spec.job import TrainingJob

# Bump when the way environments are built changes, so old ones are not reused.
LAYOUT_VERSION = 2
HOROVOD = "horovod==0.28.1"


@dataclass(frozen=True)
class EnvironmentSpec:
    """Everything that decides an environment's contents."""

    python_version: str
    requirements: tuple[str, ...]
    conda_packages: tuple[str, ...] = ()

    @property
    def hash(self) -> str:
        payload = json.dumps(
            {
                "layout": LAYOUT_VERSION,
                "python": self.python_version,
                "requirements": sorted(self.requirements),
                "conda": sorted(self.conda_packages),
            },
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Environment:
    """A resolved environment. `python` is empty where each host resolves its own while
    provisioning (SSH targets): then only the hash is known before the nodes are."""

    hash: str
    path: str
    python: str
    reused: bool
    freeze: str
    build_seconds: float = 0.0
    image: str = ""  # docker targets: the image that holds it

    @property
    def resolved(self) -> bool:
        """Built or found already (not left to each host)."""
        return bool(self.python)

    def how(self) -> str:
        return "reused" if self.reused else f"built in {self.build_seconds:.1f} s"


def tensorflow_requirement(job: TrainingJob) -> str:
    package = "tensorflow" if job.use_gpu else "tensorflow-cpu"
    version = job.framework_version
    return f"{package}=={version}.*" if version.count(".") == 1 else f"{package}=={version}"


def environment_spec(job: TrainingJob, *, python_version: str | None = None) -> EnvironmentSpec:
    extra: tuple[str, ...] = ()
    if job.distributed_backend == "mpi":
        # Horovod's wheel goes in with --no-deps (it is built here); these are its deps.
        extra = ("mpi4py", "psutil", "cloudpickle", "pyyaml", "packaging", HOROVOD)
        if job.legacy_keras:
            extra += ("tf-keras=={}.{}.*".format(*job.framework_minor),)
    return EnvironmentSpec(
        python_version=python_version or "{}.{}.{}".format(*sys.version_info[:3]),
        requirements=(tensorflow_requirement(job), *extra, *job.pip_packages),
        conda_packages=tuple(job.conda_packages),
    )
