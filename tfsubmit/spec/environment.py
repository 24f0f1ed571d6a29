"""What a job's Python environment holds, and what a built one is.

Standard library only: the host agent builds environments from an EnvironmentSpec on
machines that have nothing but Python 3.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
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
    # The content of local requirements (`name @ file:///path`, a wheel or a folder), as
    # hashes: an environment whose local package changed is another environment.
    local_content: tuple[str, ...] = ()

    @property
    def hash(self) -> str:
        payload = json.dumps(
            {
                "layout": LAYOUT_VERSION,
                "python": self.python_version,
                "requirements": sorted(self.requirements),
                "conda": sorted(self.conda_packages),
                **({"local": list(self.local_content)} if self.local_content else {}),
            },
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


# A requirement installed from this machine's disk: `name @ file:///path`.
_LOCAL = re.compile(r"@\s*file://(?P<path>\S+)")
# What a local package folder holds that is not the package (build leftovers).
_NOT_CONTENT = {".git", "__pycache__", "build", "dist", ".eggs", ".tox", ".venv"}


def local_content(requirements: tuple[str, ...]) -> tuple[str, ...]:
    """A hash of each local requirement's files (path, content), in requirement order;
    "missing" for a path that is not there (the build says so)."""
    digests = []
    for requirement in requirements:
        match = _LOCAL.search(requirement)
        if not match:
            continue
        path = Path(urllib.parse.unquote(match["path"]))
        digest = hashlib.sha256()
        if path.is_file():
            digest.update(path.read_bytes())
        elif path.is_dir():
            for folder, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if d not in _NOT_CONTENT
                                 and not d.endswith(".egg-info"))
                for name in sorted(files):
                    file = Path(folder, name)
                    digest.update(str(file.relative_to(path)).encode() + b"\0")
                    try:
                        digest.update(file.read_bytes())
                    except OSError:
                        digest.update(b"unreadable")
        else:
            digests.append(f"{requirement}: missing")
            continue
        digests.append(f"{requirement}: {digest.hexdigest()[:16]}")
    return tuple(digests)


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
    return tensorflow_package(job.framework_version, gpu=job.use_gpu)


def tensorflow_package(version: str, *, gpu: bool) -> str:
    """TensorFlow's pip requirement: `tensorflow-cpu==2.21.*` (the GPU build with gpu)."""
    package = "tensorflow" if gpu else "tensorflow-cpu"
    return f"{package}=={version}.*" if version.count(".") == 1 else f"{package}=={version}"


def environment_spec(job: TrainingJob, *, python_version: str | None = None) -> EnvironmentSpec:
    extra: tuple[str, ...] = ()
    if job.distributed_backend == "mpi":
        # Horovod's wheel goes in with --no-deps (it is built here); these are its deps.
        extra = ("mpi4py", "psutil", "cloudpickle", "pyyaml", "packaging", HOROVOD)
        if job.legacy_keras:
            extra += ("tf-keras=={}.{}.*".format(*job.framework_minor),)
    requirements = (tensorflow_requirement(job), *extra, *job.pip_packages)
    return EnvironmentSpec(
        python_version=python_version or "{}.{}.{}".format(*sys.version_info[:3]),
        requirements=requirements,
        conda_packages=tuple(job.conda_packages),
        local_content=local_content(requirements),
    )
