"""Launchers decide what runs: pure functions from a job and its nodes to process specs.

They start nothing, read no `os.environ`, and import no target and no Prefect.
"""

from tfsubmit.launchers.multiworker import plan_multiworker
from tfsubmit.launchers.parameter_server import plan_parameter_server
from tfsubmit.launchers.single_node import plan_single_node

__all__ = ["plan_multiworker", "plan_parameter_server", "plan_single_node"]
