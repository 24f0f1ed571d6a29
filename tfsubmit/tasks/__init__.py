"""One Prefect task per pipeline step; each body calls plain library code."""

from tfsubmit.tasks.collect import collect_outputs
from tfsubmit.tasks.environment import resolve_environment
from tfsubmit.tasks.launch import launch_topology
from tfsubmit.tasks.provision import provision_nodes
from tfsubmit.tasks.snapshot import snapshot_source

__all__ = [
    "collect_outputs",
    "launch_topology",
    "provision_nodes",
    "resolve_environment",
    "snapshot_source",
]
