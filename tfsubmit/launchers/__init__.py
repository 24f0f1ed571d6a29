"""Launchers decide what runs: pure functions from a job and its nodes to process specs.

They start nothing, read no `os.environ`, and import no target and no Prefect. The
pipeline picks one launcher object from `LAUNCHERS` by the job's distributed_backend and
calls its hooks (`plan`, `preflight`, `explain`); it never branches on the backend.
"""

from __future__ import annotations

from tfsubmit.errors import NotSupportedError
from tfsubmit.launchers.base import Launcher, Plan, Preflight
from tfsubmit.launchers.horovod import Horovod
from tfsubmit.launchers.multiworker import MultiWorker, plan_multiworker
from tfsubmit.launchers.parameter_server import ParameterServer, plan_parameter_server
from tfsubmit.launchers.single_node import SingleNode, plan_single_node
from tfsubmit.spec.job import TrainingJob

# distributed_backend -> its launcher (None: one process on one node).
LAUNCHERS: dict[str | None, Launcher] = {
    None: SingleNode(),
    "ps": ParameterServer(),
    "multiworker": MultiWorker(),
    "mpi": Horovod(),
}


def launcher_for(job: TrainingJob) -> Launcher:
    try:
        return LAUNCHERS[job.distributed_backend]
    except KeyError:
        raise NotSupportedError(
            f"distributed_backend={job.distributed_backend!r} is not supported yet") from None


__all__ = ["LAUNCHERS", "Launcher", "Plan", "Preflight", "launcher_for", "plan_multiworker",
           "plan_parameter_server", "plan_single_node"]
