"""The settings of each kind of target, as targets.yaml (or a Prefect Block) holds them.

Every field has a description; unknown fields are refused.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


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
