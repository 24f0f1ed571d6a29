"""The single-node launcher: one process running the entry script."""

from __future__ import annotations

from tfsubmit.launchers.base import Launcher, Plan, job_env
from tfsubmit.spec.job import TrainingJob
from tfsubmit.spec.process import LaunchOptions, Node, ProcessSpec


def plan_single_node(job: TrainingJob, node: Node, *, run_id: str) -> list[ProcessSpec]:
    """One `python entry_script args...` process in the node's working directory."""
    env = job_env(job, run_id=run_id, node=node, role="worker", index=0)
    env["PYTHONPATH"] = node.runtime
    return [
        ProcessSpec(
            host=node.host,
            argv=(node.python, job.entry_script, *job.script_arguments()),
            env=env,
            cwd=node.workdir,
            role="worker",
            index=0,
        )
    ]


class SingleNode(Launcher):
    def plan(self, job: TrainingJob, nodes: list[Node], *, run_id: str,
             options: LaunchOptions) -> Plan:
        return Plan(tuple(plan_single_node(job, nodes[0], run_id=run_id)))
