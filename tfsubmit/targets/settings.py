"""The settings of each kind of target, as targets.yaml (or a Prefect Block) holds them.

Every field has a description; unknown fields are refused.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


def _ip_address(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None
    return value


class SSHHost(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str = Field(description="IP address of the host (names needing DNS are refused).")
    slots: int = Field(default=1, ge=1, description="Processes the host can run at once.")
    gpus: int = Field(default=0, ge=0, description="GPUs on the host.")

    @field_validator("address")
    @classmethod
    def _ip_address(cls, value: str) -> str:
        return _ip_address(value)


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
    keep_connections: float = Field(
        default=300.0, ge=0, description="Seconds an unused connection to a host is kept for "
        "the next submission, by tfsubmit's SSH connection pool (0: a connection per run)."
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


class SlurmLogin(BaseModel):
    """A login node that runs the Slurm commands over SSH (the SSH target's rules)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str = Field(description="IP address of the login node.")
    user: str = Field(description="Login user.")
    port: int = Field(default=22, ge=1, le=65535, description="SSH port.")
    key_file: str = Field(description="Private key used to log in.")
    known_hosts: str = Field(default="~/.ssh/known_hosts", description="Trusted host keys.")
    connect_timeout: float = Field(default=10.0, gt=0, description="Seconds to connect.")

    @field_validator("address")
    @classmethod
    def _ip_address(cls, value: str) -> str:
        return _ip_address(value)


class SlurmTargetConfig(BaseModel):
    """A Slurm cluster: each attempt of a run is one `sbatch` job."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["slurm"] = "slurm"
    workdir: str = Field(
        description="A folder on a shared file system that this machine and every node see "
                    "at the same path: run folders, environments and tfsubmit's runtime.")
    partition: str | None = Field(default=None, description="sbatch --partition.")
    account: str | None = Field(default=None, description="sbatch --account.")
    qos: str | None = Field(default=None, description="sbatch --qos.")
    constraint: str | None = Field(default=None, description="sbatch --constraint.")
    sbatch_args: list[str] = Field(
        default_factory=list, description="More sbatch options, e.g. ['--exclusive'].")
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Environment for the Slurm commands, e.g. {SLURM_CONF: /etc/slurm/slurm.conf}.")
    login: SlurmLogin | None = Field(
        default=None, description="Run sbatch/squeue/scancel on this login node over SSH.")
    env_cache: str | None = Field(
        default=None, description="Where job environments are built, once, for every node "
                                  "(default: <workdir>/envs; must be shared too).")
    command_timeout: float = Field(
        default=30.0, gt=0, description="Seconds any one Slurm command may take.")
    poll_seconds: float = Field(
        default=1.0, gt=0, description="How often the job's state is read from Slurm.")
    cpus_per_task: int | None = Field(
        default=None, ge=1, description="sbatch --cpus-per-task (default: Slurm's).")

    @field_validator("workdir")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith(("/", "~")):
            raise ValueError(f"{value!r} is not an absolute path (the nodes must see it)")
        return value


TargetConfig = SSHTargetConfig | DockerTargetConfig | SlurmTargetConfig
