"""What every launcher shares: the Plan it returns, the hooks the pipeline calls, job_env.

A launcher is pure: from (job, nodes, launch options) to immutable ProcessSpecs. It starts
nothing, reads no `os.environ`, and imports no target and no Prefect.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from tfsubmit.runtime.metrics import metrics_file
from tfsubmit.spec.job import TrainingJob
from tfsubmit.spec.process import LaunchOptions, Node, ProcessSpec


def everyone(spec: ProcessSpec) -> bool:
    return True


def nobody(spec: ProcessSpec) -> bool:
    return False


@dataclass(frozen=True)
class Plan:
    """The processes of a job, and how the supervisor should judge them."""

    specs: tuple[ProcessSpec, ...]
    # Whose exit code 0 ends the job (the others, parameter servers say, are then stopped).
    decides: Callable[[ProcessSpec], bool] = everyone
    # Which failed task is restarted alone (the others go on) rather than with the gang.
    restart_alone: Callable[[ProcessSpec], bool] = nobody


@dataclass(frozen=True)
class Preflight:
    """A quick check that the nodes can run the job together, run before it: one check of
    them all, and checks of the first node with each other (to name a failing host)."""

    description: str
    whole: ProcessSpec
    pairs: dict[str, ProcessSpec] = field(default_factory=dict)
    seconds: float = 60.0

    def failure(self, first_host: str, failing: list[str]) -> str:
        """The error when `whole` failed; `failing`: hosts whose pair check failed too."""
        raise NotImplementedError


class Launcher:
    """One distributed backend. The pipeline calls these hooks and never asks which it has."""

    def plan(self, job: TrainingJob, nodes: list[Node], *, run_id: str,
             options: LaunchOptions) -> Plan:
        raise NotImplementedError

    def preflight(self, job: TrainingJob, nodes: list[Node], *, run_id: str,
                  options: LaunchOptions) -> Preflight | None:
        """A check to run before the job, or None (the default: nothing to check)."""
        return None

    def explain(self, reason: str | None, plan: Plan,
                log_lines: Callable[[], list[str]]) -> str | None:
        """A failed job's reason, made more precise from the merged log's lines (read only
        when asked for: the default keeps the reason as it is)."""
        return reason


# TF_CPP_MIN_LOG_LEVEL of a job that sets none: errors only. A job sets its own (e.g. "0")
# in environment_variables to see TensorFlow's INFO lines again.
QUIET_TF_LOG_LEVEL = "2"


def job_env(job: TrainingJob, *, run_id: str, node: Node, role: str, index: int) -> dict[str, str]:
    """Variables every process of a job gets; the user's own come last but cannot clash."""
    return {
        "PYTHONUNBUFFERED": "1",
        "TFSUBMIT_RUN_ID": run_id,
        "TFSUBMIT_ROLE": role,
        "TFSUBMIT_INDEX": str(index),
        "TFSUBMIT_METRICS_FILE": metrics_file(node.workdir, role, index),
        "TFSUBMIT_OUTPUTS": f"{node.workdir}/outputs",
        # TensorFlow's C++ start-up noise (INFO and WARNING) off unless the job sets it.
        "TF_CPP_MIN_LOG_LEVEL": QUIET_TF_LOG_LEVEL,
        **job.environment_variables,
        **job.secret_values(),  # only ever in the child's environment
    }
