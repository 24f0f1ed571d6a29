from __future__ import annotations

import re
import time

from prefect import task
from prefect.cache_policies import NO_CACHE

from tfsubmit.environment import Environment
from tfsubmit.errors import NotSupportedError, TargetError
from tfsubmit.launchers import plan_multiworker, plan_parameter_server, plan_single_node
from tfsubmit.launchers.horovod import SSHAgent, plan_horovod, plan_preflight
from tfsubmit.process import Node
from tfsubmit.spec import TrainingJob
from tfsubmit.submission import Submission
from tfsubmit.supervisor import Outcome, RestartPolicy, supervise
from tfsubmit.tasks._logging import forwarded
from tfsubmit.tasks.progress import ProgressWatcher


def plan(job: TrainingJob, nodes: list[Node], *, run_id: str, mpi_options: dict):
    """The job's process specs, and which of them decide when the job is done."""
    backend = job.distributed_backend
    if backend is None:
        return plan_single_node(job, nodes[0], run_id=run_id), _everyone
    if backend == "ps":
        # Done when the chief (the coordinator) is, or with no chief when all workers are;
        # the parameter servers (and workers) are then stopped.
        specs = plan_parameter_server(job, nodes[: job.node_count], run_id=run_id,
                                      chief=job.chief)
        return specs, _is_chief if job.chief else _is_worker
    if backend == "multiworker":
        return plan_multiworker(job, nodes, run_id=run_id), _everyone
    if backend == "mpi":
        return [plan_horovod(job, nodes, run_id=run_id, **mpi_options).spec], _everyone
    raise NotSupportedError(f"distributed_backend={backend!r} is not supported yet")


def mpi_preflight(job: TrainingJob, sub: Submission, nodes: list[Node], options: dict) -> None:
    """An mpi4py allreduce across every slot, with a short timeout; on failure, find and
    name the hosts that cannot join (instead of the silent hang users of mpirun know)."""

    def allreduce(check_job: TrainingJob, check_nodes: list[Node], name: str) -> Outcome:
        spec = plan_preflight(check_job, check_nodes, run_id=sub.run_id, **options).spec
        return supervise(sub.target, [spec], run_id=sub.run_id, log=sub.log,
                         log_dir=sub.paths.logs / name, cancel=sub.cancel,
                         max_seconds=PREFLIGHT_SECONDS, grace_seconds=2)

    sub.log.event(f"pre-flight: mpi4py allreduce across {job.node_count} node(s) x "
                  f"{job.process_count_per_node} slot(s)")
    if allreduce(job, nodes, "preflight").status == "Completed":
        return
    advice = ("check that Open MPI and the network between the hosts work (logs in "
              "logs/preflight*)")
    if job.node_count == 1:
        raise TargetError(f"MPI pre-flight failed on {nodes[0].host}: {job.process_count_per_node}"
                          f" ranks did not complete an allreduce within {PREFLIGHT_SECONDS} s; "
                          + advice)
    pair = job.model_copy(update={"node_count": 2, "process_count_per_node": 1})
    failing = [node.host for node in nodes[1: job.node_count]
               if allreduce(pair, [nodes[0], node], f"preflight-{node.host}").status
               != "Completed"]
    where = ", ".join(failing) if failing else "the hosts together (each pair works)"
    raise TargetError(f"MPI pre-flight failed: {where} cannot join an allreduce with "
                      f"{nodes[0].host} within {PREFLIGHT_SECONDS} s; " + advice)


_RANK = re.compile(r"process rank (\d+)|Process name: \[\[\d+,\d+\],(\d+)\]")


def _name_the_rank(sub: Submission, spec, reason: str | None) -> str | None:
    """mpirun says which rank ended the job; put its rank and host into the reason."""
    for line in sub.paths.output_log.read_text().splitlines():
        match = _RANK.search(line) if line.startswith("[mpirun:") else None
        if match:
            rank = int(match[1] or match[2])
            host = spec.rank_hosts[rank] if rank < len(spec.rank_hosts) else "?"
            return f"rank {rank}@{host} failed ({reason}; {line.split('] ', 1)[1].strip()})"
    return reason


def _everyone(spec) -> bool:
    return True


def _is_chief(spec) -> bool:
    return spec.role == "chief"


def _is_worker(spec) -> bool:
    return spec.role == "worker"


def _nobody(spec) -> bool:
    return False


PREFLIGHT_SECONDS = 60


@task(name="launch_topology", cache_policy=NO_CACHE)
def launch_topology(
    job: TrainingJob, sub: Submission, nodes: list[Node], env: Environment
) -> Outcome:
    """Plan the job's processes, run them on the nodes, and stream every line.

    Args:
        job: the validated job spec.
        sub: the submission; its cancel flag stops the processes.
        nodes: the provisioned nodes.
        env: the job's environment.

    Returns:
        The outcome: Completed, Failed or Canceled, with each process's exit code.
    """
    sub.check_canceled()
    ssh = sub.target.mpi_ssh()
    mpi_options = {"as_root": sub.target.runs_as_root, "agent": ssh and SSHAgent(**ssh)}
    if job.distributed_backend == "mpi":
        mpi_preflight(job, sub, nodes, mpi_options)
    specs, decides = plan(job, nodes, run_id=sub.run_id, mpi_options=mpi_options)
    with forwarded(sub.log) as log:
        placed = ", ".join(f"{s.role}:{s.index}@{s.host}" for s in specs)
        log.event(f"starting {len(specs)} process(es) ({placed}): {' '.join(specs[0].argv[1:])}")
        watcher = ProgressWatcher(sub.artifacts, lambda: sub.target.metric_files(nodes),
                                  warn=log.event)
        with watcher:
            outcome = _supervise(job, sub, nodes, specs, decides, log)
        if job.distributed_backend == "mpi" and outcome.status == "Failed":
            outcome.reason = _name_the_rank(sub, specs[0], outcome.reason)
        if outcome.status == "Canceled":
            outcome.reason = sub.cancel_reason()
        log.event(f"processes ended: {outcome.describe()}")
        if outcome.restarts:
            sub.record(restarts=outcome.restarts)
    return outcome


def _supervise(job: TrainingJob, sub: Submission, nodes: list[Node], specs, decides,
               log) -> Outcome:
    return supervise(
        sub.target,
        specs,
        run_id=sub.run_id,
        log=log,
        log_dir=sub.paths.logs,
        cancel=sub.cancel,
        max_seconds=job.max_run_duration_seconds,
        on_started=lambda handles: sub.record(
            status="Running", started=time.time(), pids=[h.pid for h in handles]
        ),
        decides=decides,
        policy=RestartPolicy(
            max_restarts=job.max_restarts,
            permanent_exit_codes=frozenset(job.permanent_exit_codes),
            # ps: TensorFlow's coordinator re-uses a worker restarted at its address.
            alone=_is_worker if job.distributed_backend == "ps" else _nobody,
        ),
        hang_seconds=job.hang_timeout_seconds,
        activity=lambda: sub.target.last_activity(nodes),
    )
