"""azureml.core.runconfig: the distributed job configurations of ScriptRunConfig."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class MpiConfiguration:
    """Horovod over Open MPI: distributed_backend="mpi"."""

    process_count_per_node: int = 1
    node_count: int = 1

    def job_fields(self) -> dict:
        return {"distributed_backend": "mpi", "node_count": self.node_count,
                "process_count_per_node": self.process_count_per_node}


@dataclass
class TensorflowConfiguration:
    """Parameter servers: distributed_backend="ps", a TF_CONFIG per process (Azure's:
    `ps` and `worker`, worker 0 leading)."""

    worker_count: int = 1
    parameter_server_count: int = 1
    node_count: int = 1

    def job_fields(self) -> dict:
        return {"distributed_backend": "ps", "worker_count": self.worker_count,
                "parameter_server_count": self.parameter_server_count,
                "node_count": self.node_count}


class RunConfiguration:
    """Accepted for `ScriptRunConfig(run_config=...)`: its environment, target and node
    count are read."""

    def __init__(self, framework: str = "Python", **ignored) -> None:
        self.environment = None
        self.target = "local"
        self.node_count = 1
