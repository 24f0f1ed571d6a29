"""distributed_backend="mpi": Horovod ranks started by Open MPI's `mpirun` (pure functions).

The plan is one process, `mpirun`, on the first node; it starts node_count x
process_count_per_node ranks (`--map-by slot`: the first node's slots first). Each rank runs
`python -m tfsubmit.runtime.rank SCRIPT ARGS`, which moves into that rank's own run folder
(hosts may share a file system), sets its GPU, and runs the script in-process.
No shell string is built here: the argv is a list, the ssh agent one element of it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass

from tfsubmit.errors import JobSpecError
from tfsubmit.launchers.base import Launcher, Plan, Preflight, job_env
from tfsubmit.spec.job import TrainingJob
from tfsubmit.spec.process import DEFAULT_LAUNCH, LaunchOptions, Node, ProcessSpec, RemoteShell

RANK_MODULE = "tfsubmit.runtime.rank"
# mpirun's own settings; it hands them to the daemons it starts on the other hosts.
MPIRUN_ENV = {
    # Open MPI 4.1's daemons share their hardware topology through a memory segment they
    # map at an address they guess; on a busy host that mapping sometimes segfaults the
    # daemon (orted, in hwloc_shmem_topology_write) and the job fails at start. Off.
    "OMPI_MCA_rtc_hwloc_vmhole": "none",
}
PREFLIGHT_SECONDS = 60
PREFLIGHT = (
    "import sys\n"
    "from mpi4py import MPI\n"
    "comm = MPI.COMM_WORLD\n"
    "total = comm.allreduce(1)\n"
    "assert total == comm.Get_size(), (total, comm.Get_size())\n"
    "sys.stdout.write(f'allreduce ok: rank {comm.Get_rank()} of {total}\\n')\n"  # one write
)


def ssh_agent(shell: RemoteShell) -> str:
    """mpirun's `plm_rsh_agent`: one argv element; Open MPI splits it on spaces (so paths
    must not hold spaces)."""
    return " ".join([
        "ssh", "-i", shell.key_file, "-p", str(shell.port),
        "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={shell.known_hosts}", "-o", "ConnectTimeout=10",
    ])


@dataclass(frozen=True)
class MPIPlan:
    hostfile: str  # what `--hostfile` would hold; the argv passes the same with -H
    spec: ProcessSpec


def check_gpus(job: TrainingJob, nodes: list[Node]) -> None:
    """use_gpu with mpi gives each local rank its own GPU: a host needs enough of them."""
    if not (job.use_gpu and job.distributed_backend == "mpi"):
        return
    for node in nodes[: job.node_count]:
        if job.process_count_per_node > node.gpus:
            raise JobSpecError(
                f"process_count_per_node: {job.process_count_per_node} ranks on host "
                f"{node.host}, which has {node.gpus} GPU(s); use_gpu gives each rank its own "
                "GPU (set `gpus:` on the target's hosts, or lower process_count_per_node)")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def shared_network(addresses: list[str]) -> str:
    """The smallest of /24, /16, /8 holding every address: what the hosts share."""
    ips = [ipaddress.ip_address(a) for a in addresses]
    for prefix in (24, 16, 8):
        networks = {ipaddress.ip_network(f"{ip}/{prefix}", strict=False) for ip in ips}
        if len(networks) == 1:
            return str(networks.pop())
    raise ValueError(f"hosts {addresses} share no /8 network; pin the interfaces by hand")


def plan_horovod(
    job: TrainingJob,
    nodes: list[Node],
    *,
    run_id: str,
    options: LaunchOptions = DEFAULT_LAUNCH,
    program: tuple[str, ...] | None = None,
) -> MPIPlan:
    """`mpirun` for the job's ranks. `program` replaces the entry script (the pre-flight)."""
    used = nodes[: job.node_count]
    per_node = job.process_count_per_node
    ranks = [node for node in used for _ in range(per_node)]
    names = [node.address or node.host for node in used]
    hosts = ["localhost" if n == "127.0.0.1" and len(used) == 1 else n for n in names]
    slots = [per_node] * len(hosts)
    if len(used) > 1 and set(names) == {"127.0.0.1"}:  # nodes emulated on this machine
        hosts, slots = ["localhost"], [len(ranks)]
    if options.in_allocation:  # mpirun checks -H against the allocation's node names
        hosts = [node.host for node in used]
    env = job_env(job, run_id=run_id, node=used[0], role="rank", index=0)
    # Unbuffered output reaches mpirun in pieces, and `--tag-output` then tags (and mixes)
    # pieces of lines; ranks use line buffering instead (see tfsubmit.runtime.rank).
    del env["PYTHONUNBUFFERED"]
    env.update({
        "PYTHONPATH": used[0].runtime,
        # ':'-joined, not JSON: mpirun's -x must not meet commas or quotes.
        "TFSUBMIT_RANK_DIRS": ":".join(node.workdir for node in ranks),
    })
    if job.use_gpu:  # each local rank its own GPU
        env["TFSUBMIT_RANK_GPUS"] = ":".join(str(r % per_node) for r in range(len(ranks)))
    if job.legacy_keras:
        env["TF_USE_LEGACY_KERAS"] = "1"
    argv = ["mpirun"]
    if options.as_root:
        argv.append("--allow-run-as-root")
    argv += ["-np", str(len(ranks)),
             "-H", ",".join(f"{host}:{count}" for host, count in zip(hosts, slots, strict=True)),
             "--bind-to", "none", "--map-by", "slot", "--tag-output"]
    if options.remote_shell is not None:
        argv += ["--mca", "plm_rsh_agent", ssh_agent(options.remote_shell)]
    network = shared_network(names) if all(_is_ip(name) for name in names) else None
    if network:
        argv += ["--mca", "oob_tcp_if_include", network, "--mca", "btl_tcp_if_include",
                 network]
    for name, value in env.items():
        argv += ["-x", f"{name}={value}"]
    body = program or ("-m", RANK_MODULE, job.entry_script,
                       *job.script_arguments())
    argv += [used[0].python, *body]
    spec = ProcessSpec(
        host=used[0].host, argv=tuple(argv), env={"TFSUBMIT_RUN_ID": run_id, **MPIRUN_ENV},
        cwd=used[0].workdir, role="mpirun", index=0,
        rank_hosts=tuple(node.host for node in ranks),
    )
    hostfile = "".join(f"{host} slots={count}\n" for host, count in zip(hosts, slots, strict=True))
    return MPIPlan(hostfile, spec)


def plan_preflight(job: TrainingJob, nodes: list[Node], **kwargs) -> MPIPlan:
    """An mpi4py allreduce across every slot, started exactly as the job will be."""
    return plan_horovod(job, nodes, program=("-c", PREFLIGHT), **kwargs)


_RANK = re.compile(r"process rank (\d+)|Process name: \[\[\d+,\d+\],(\d+)\]")


@dataclass(frozen=True)
class _AllreduceCheck(Preflight):
    def failure(self, first_host: str, failing: list[str]) -> str:
        advice = ("check that Open MPI and the network between the hosts work (logs in "
                  "logs/preflight*)")
        if not self.pairs:
            return (f"MPI pre-flight failed on {first_host}: {self.description} did not "
                    f"complete within {self.seconds:g} s; " + advice)
        where = ", ".join(failing) if failing else "the hosts together (each pair works)"
        return (f"MPI pre-flight failed: {where} cannot join an allreduce with {first_host} "
                f"within {self.seconds:g} s; " + advice)


class Horovod(Launcher):
    """Horovod ranks under one `mpirun`, checked first by an mpi4py allreduce."""

    def plan(self, job: TrainingJob, nodes: list[Node], *, run_id: str,
             options: LaunchOptions) -> Plan:
        return Plan((plan_horovod(job, nodes, run_id=run_id, options=options).spec,))

    def preflight(self, job: TrainingJob, nodes: list[Node], *, run_id: str,
                  options: LaunchOptions) -> Preflight:
        """An allreduce across every slot, with a short timeout; on failure, one between the
        first node and each other, to name the hosts that cannot join (instead of the
        silent hang users of mpirun know)."""
        pair = job.model_copy(update={"node_count": 2, "process_count_per_node": 1})
        return _AllreduceCheck(
            description=(f"mpi4py allreduce across {job.node_count} node(s) x "
                         f"{job.process_count_per_node} slot(s)"),
            whole=plan_preflight(job, nodes, run_id=run_id, options=options).spec,
            pairs={node.host: plan_preflight(pair, [nodes[0], node], run_id=run_id,
                                             options=options).spec
                   for node in nodes[1: job.node_count]},
            seconds=PREFLIGHT_SECONDS,
        )

    def explain(self, reason: str | None, plan: Plan,
                log_lines: Callable[[], list[str]]) -> str | None:
        """mpirun says which rank ended the job; put its rank and host into the reason."""
        spec = plan.specs[0]
        for line in log_lines():
            match = _RANK.search(line) if line.startswith("[mpirun:") else None
            if match:
                rank = int(match[1] or match[2])
                host = spec.rank_hosts[rank] if rank < len(spec.rank_hosts) else "?"
                return f"rank {rank}@{host} failed ({reason}; {line.split('] ', 1)[1].strip()})"
        return reason
