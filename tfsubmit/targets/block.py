"""SSH targets stored as Prefect Blocks, for teams that keep settings in Prefect.

    from tfsubmit.targets.block import SSHTargetBlock
    config = SSHTargetConfig(hosts=[...], user="train", key_file="~/.ssh/id_ed25519")
    SSHTargetBlock(target=config).save("gpu-cluster")

`compute_target="gpu-cluster"` then finds it when targets.yaml has no target of that name.
Block names allow lowercase letters, digits and dashes.
"""

from __future__ import annotations

import os
from pathlib import Path

from prefect.blocks.core import Block
from pydantic import Field

from tfsubmit.targets.config import SSHTargetConfig


class SSHTargetBlock(Block):
    """A tfsubmit SSH compute target: the same settings as an ssh entry of targets.yaml."""

    _block_type_name = "tfsubmit SSH Target"
    _block_type_slug = "tfsubmit-ssh-target"
    _description = "Machines tfsubmit reaches over SSH to run TensorFlow jobs."

    target: SSHTargetConfig = Field(description="Hosts, login and folders of the target.")


def load_block_target(name: str, workspace_root: Path) -> SSHTargetConfig | None:
    """The target saved as block `name` on the Prefect API in use, or None."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tfsubmit.server import server_status
    from tfsubmit.workspace import Workspace

    api = os.environ.get("PREFECT_API_URL")
    if not api:
        status = server_status(Workspace(workspace_root))
        if not status.running:
            return None
        api = status.api_url
    with temporary_settings({PREFECT_API_URL: api}):
        try:
            return SSHTargetBlock.load(name).target
        except ValueError:  # no such block (or a name no block can have)
            return None
