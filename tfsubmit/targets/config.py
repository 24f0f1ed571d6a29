"""Named compute targets, defined once in `<workspace>/targets.yaml`, and `get_target`.

    gpu-cluster:
      type: ssh
      hosts:
        - {address: 10.0.0.11, slots: 4, gpus: 2}
        - {address: 10.0.0.12, slots: 4, gpus: 2}
      user: train
      key_file: ~/.ssh/id_ed25519
      workdir: /var/tmp/tfsubmit
      known_hosts: ~/.ssh/known_hosts   # host keys verified by default
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tfsubmit.errors import TargetError
from tfsubmit.spec.yamlfile import load_mapping
from tfsubmit.store.layout import Workspace
from tfsubmit.targets.base import Target
from tfsubmit.targets.local import LocalTarget
from tfsubmit.targets.settings import (
    DockerTargetConfig,
    SlurmTargetConfig,
    SSHHost,
    SSHTargetConfig,
    TargetConfig,
)

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
CONFIGS = {"ssh": SSHTargetConfig, "docker": DockerTargetConfig, "slurm": SlurmTargetConfig}
# Finds a target's settings elsewhere (a Prefect Block) when targets.yaml has none.
BlockLookup = Callable[[str], "TargetConfig | None"]


def _ssh_target(name: str, config: SSHTargetConfig) -> Target:
    from tfsubmit.targets.ssh import SSHTarget  # paramiko loads only for SSH targets

    return SSHTarget(name, config)


def _docker_target(name: str, config: DockerTargetConfig) -> Target:
    from tfsubmit.targets.docker import DockerTarget  # the docker SDK loads only for these

    return DockerTarget(name, config)


def _slurm_target(name: str, config: SlurmTargetConfig) -> Target:
    from tfsubmit.targets.slurm import SlurmTarget

    return SlurmTarget(name, config)


# A new kind of target: its settings model in CONFIGS, its constructor here.
TARGETS: dict[str, Callable[[str, Any], Target]] = {
    "ssh": _ssh_target, "docker": _docker_target, "slurm": _slurm_target,
}


def get_target(name: str, workspace_root: Path, *, find_block: BlockLookup | None = None
               ) -> Target:
    """The compute target called `name`: `local`, one in targets.yaml, or (through
    `find_block`) one saved as a Prefect Block."""
    targets = load_targets(workspace_root)  # a broken targets.yaml is named, even for local
    if name == "local":
        return LocalTarget()
    config = targets.get(name) or (find_block(name) if find_block else None)
    if config is None:
        known = ", ".join(["local", *sorted(targets)])
        raise TargetError(
            f"compute_target: unknown target {name!r}; known targets: {known} "
            f"(define targets in {targets_file(workspace_root)}, or save a "
            f"tfsubmit-ssh-target block named {name!r} in Prefect)"
        )
    return TARGETS[config.type](name, config)


def targets_file(workspace_root: Path) -> Path:
    return Workspace(workspace_root).targets_file


# targets.yaml as last parsed, by path: (a hash of its bytes then, the targets).
_READ: dict[Path, tuple[str, dict[str, TargetConfig]]] = {}


def load_targets(workspace_root: Path) -> dict[str, TargetConfig]:
    """The workspace's targets; parsed again only when targets.yaml's bytes changed (a
    submission asks several times; reading and hashing is cheap, parsing is not)."""
    path = targets_file(workspace_root)
    try:
        key = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
    except FileNotFoundError:
        return {}
    except OSError:
        key = None  # load_mapping names the problem
    if not path.exists():
        return {}
    if key is not None and path in _READ and _READ[path][0] == key:
        return dict(_READ[path][1])
    targets = _parse_targets(path)
    if key is not None:
        _READ[path] = (key, targets)
    return dict(targets)


def _parse_targets(path: Path) -> dict[str, TargetConfig]:
    data = load_mapping(path, "targets", TargetError, empty_ok=True)
    targets = {}
    for name, settings in data.items():
        if name == "local":
            raise TargetError(f"{path}: target 'local' is built in (this machine) and cannot "
                              f"be redefined; give this target another name")
        if not NAME.fullmatch(name):
            raise TargetError(f"{path}: {name!r} is not a target name (letters, digits, "
                              f"'_', '.', '-', at most 64)")
        if not isinstance(settings, dict) or settings.get("type") not in CONFIGS:
            raise TargetError(f"{path}: target {name!r}: type must be one of "
                              f"{', '.join(CONFIGS)}")
        try:
            targets[name] = CONFIGS[settings["type"]](**settings)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
            )
            raise TargetError(f"{path}: target {name!r}: {problems}") from None
    return targets


def save_target(workspace_root: Path, name: str, config: TargetConfig) -> None:
    """Add or replace one target in targets.yaml."""
    path = targets_file(workspace_root)
    data = load_mapping(path, "targets", TargetError, empty_ok=True) if path.exists() else {}
    data[name] = config.model_dump(mode="json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


__all__ = ["CONFIGS", "TARGETS", "DockerTargetConfig", "SSHHost", "SSHTargetConfig",
           "SlurmTargetConfig",
           "TargetConfig", "get_target", "load_targets", "save_target", "targets_file"]
