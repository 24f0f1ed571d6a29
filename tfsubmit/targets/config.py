"""Named compute targets, defined once in `<workspace>/targets.yaml`.

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

import ipaddress
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tfsubmit.errors import TargetError


class SSHHost(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str = Field(description="IP address of the host (names needing DNS are refused).")
    slots: int = Field(default=1, ge=1, description="Processes the host can run at once.")
    gpus: int = Field(default=0, ge=0, description="GPUs on the host.")

    @field_validator("address")
    @classmethod
    def _ip_address(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address") from None
        return value


class SSHTargetConfig(BaseModel):
    """Machines reached over SSH (paramiko)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["ssh"] = "ssh"
    hosts: list[SSHHost] = Field(min_length=1, description="The hosts, primary first.")
    user: str = Field(description="Login user on every host.")
    port: int = Field(default=22, ge=1, le=65535, description="SSH port.")
    key_file: str = Field(description="Private key used to log in.")
    workdir: str = Field(default="/var/tmp/tfsubmit", description="Folder tfsubmit owns on hosts.")
    known_hosts: str = Field(default="~/.ssh/known_hosts", description="Trusted host keys.")
    trust_on_first_use: bool = Field(
        default=False, description="Record unknown host keys instead of refusing them."
    )
    python: str = Field(default="python3", description="Python 3 on the hosts.")
    env_cache: str = Field(
        default="~/.cache/tfsubmit/envs", description="Where hosts keep job environments."
    )
    connect_timeout: float = Field(default=10.0, gt=0, description="Seconds to connect.")
    min_free_mb: int = Field(default=2048, ge=0, description="Disk space pre-flight needs.")
    heartbeat_seconds: float = Field(
        default=2.0, gt=0, description="How often a running job's hosts are checked."
    )


class DockerTargetConfig(BaseModel):
    """A Docker engine: environments become images, processes become containers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["docker"] = "docker"
    base_url: str = Field(
        default="unix:///var/run/docker.sock",
        description="The engine: unix:///path/docker.sock, tcp://..., or ssh://user@host:port "
                    "(a remote engine: files are copied into and out of its containers).",
    )
    key_file: str | None = Field(
        default=None, description="ssh:// engines: the private key to log in with."
    )
    known_hosts: str = Field(
        default="~/.ssh/known_hosts", description="ssh:// engines: trusted host keys."
    )
    gpus: Literal["all"] | int | None = Field(
        default=None, description="GPUs containers may use: 'all', a count, or none."
    )
    base_image: str = Field(
        default="tfsubmit-base:bookworm",
        description="Image environments are built on (`tfsubmit image bootstrap` makes it).",
    )
    timeout: float = Field(default=120.0, gt=0, description="Seconds per engine API call.")

    @field_validator("base_url")
    @classmethod
    def _local_engine(cls, value: str) -> str:
        if not value.startswith(("unix://", "tcp://", "http://", "https://", "ssh://")):
            raise ValueError(f"{value!r} is not an engine URL (unix:///var/run/docker.sock)")
        return value


TargetConfig = SSHTargetConfig | DockerTargetConfig
CONFIGS = {"ssh": SSHTargetConfig, "docker": DockerTargetConfig}


def targets_file(workspace_root: Path) -> Path:
    return workspace_root / "targets.yaml"


def load_targets(workspace_root: Path) -> dict[str, TargetConfig]:
    path = targets_file(workspace_root)
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise TargetError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise TargetError(f"{path} must map target names to their settings")
    targets = {}
    for name, settings in data.items():
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
    data = yaml.safe_load(path.read_text()) if path.exists() else {}
    data = data or {}
    data[name] = config.model_dump(mode="json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
