"""SSH targets stored as Prefect Blocks, for teams that keep settings in Prefect.

    from tfsubmit.tasks.blocks import SSHTargetBlock
    config = SSHTargetConfig(hosts=[...], user="train", key_file="~/.ssh/id_ed25519")
    SSHTargetBlock(target=config).save("gpu-cluster")

`compute_target="gpu-cluster"` then finds it when targets.yaml has no target of that name.
Block names allow lowercase letters, digits and dashes.
"""

from __future__ import annotations

from prefect.blocks.core import Block
from prefect.settings import PREFECT_API_URL, temporary_settings
from pydantic import Field

from tfsubmit.targets.settings import SSHTargetConfig


class SSHTargetBlock(Block):
    """A tfsubmit SSH compute target: the same settings as an ssh entry of targets.yaml."""

    _block_type_name = "tfsubmit SSH Target"
    _block_type_slug = "tfsubmit-ssh-target"
    _description = "Machines tfsubmit reaches over SSH to run TensorFlow jobs."

    target: SSHTargetConfig = Field(description="Hosts, login and folders of the target.")


def load_block_target(name: str, api_url: str | None) -> SSHTargetConfig | None:
    """The target saved as block `name` on the Prefect API at `api_url`, or None (also
    when there is no API to ask)."""
    if not api_url:
        return None
    with temporary_settings({PREFECT_API_URL: api_url}):
        try:
            return SSHTargetBlock.load(name).target
        except ValueError:  # no such block (or a name no block can have)
            return None
