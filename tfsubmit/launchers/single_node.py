"""The single-node launcher: one process running the entry script."""

from __future__ import annotations

from tfsubmit.process import Node, ProcessSpec
from tfsubmit.spec import TrainingJob


def job_env(job: TrainingJob, *, run_id: str, node: Node, role: str, index: int) -> dict[str, str]:
    """Variables every process of a job gets; the user's own come last but cannot clash."""
    return {
        "PYTHONUNBUFFERED": "1",
        "TFSUBMIT_RUN_ID": run_id,
        "TFSUBMIT_ROLE": role,
        "TFSUBMIT_INDEX": str(index),
        "TFSUBMIT_METRICS_FILE": f"{node.workdir}/.tfsubmit/metrics-{role}-{index}.jsonl",
        "TFSUBMIT_OUTPUTS": f"{node.workdir}/outputs",
        **job.environment_variables,
    }


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
