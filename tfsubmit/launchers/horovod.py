"""distributed_backend="mpi": Horovod ranks started by Open MPI's `mpirun` (pure functions).

The plan is one process, `mpirun`, on the first node; it starts node_count x
process_count_per_node ranks (`--map-by slot`: the first node's slots first). Each rank runs
`python -m tfsubmit.remote rank SCRIPT ARGS`, which moves into that rank's own run folder
(hosts may share a file system), sets its GPU, and runs the script in-process.
No shell string is built here: the argv is a list, the ssh agent one element of it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from tfsubmit.errors import JobSpecError
from tfsubmit.launchers.single_node import job_env
from tfsubmit.process import Node, ProcessSpec
from tfsubmit.spec import TrainingJob

PREFLIGHT = (
    "import sys\n"
    "from mpi4py import MPI\n"
    "comm = MPI.COMM_WORLD\n"
    "total = comm.allreduce(1)\n"
    "assert total == comm.Get_size(), (total, comm.Get_size())\n"
    "sys.stdout.write(f'allreduce ok: rank {comm.Get_rank()} of {total}\\n')\n"  # one write
)


@dataclass(frozen=True)
class SSHAgent:
    """How mpirun on the first node reaches the others."""

    key_file: str
    port: int
    known_hosts: str

    def argv(self) -> str:
        # One argv element; Open MPI splits it on spaces (so paths must not hold spaces).
        return " ".join([
            "ssh", "-i", self.key_file, "-p", str(self.port),
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "ConnectTimeout=10",
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
    as_root: bool,
    agent: SSHAgent | None = None,
    program: tuple[str, ...] | None = None,
) -> MPIPlan:
    """`mpirun` for the job's ranks. `program` replaces the entry script (the pre-flight)."""
    used = nodes[: job.node_count]
    per_node = job.process_count_per_node
    ranks = [node for node in used for _ in range(per_node)]
    names = [node.address or node.host for node in used]
    hosts = ["localhost" if n == "127.0.0.1" and len(used) == 1 else n for n in names]
    env = job_env(job, run_id=run_id, node=used[0], role="rank", index=0)
    # Unbuffered output reaches mpirun in pieces, and `--tag-output` then tags (and mixes)
    # pieces of lines; ranks use line buffering instead (see tfsubmit.remote.rank).
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
    if as_root:
        argv.append("--allow-run-as-root")
    argv += ["-np", str(len(ranks)),
             "-H", ",".join(f"{host}:{per_node}" for host in hosts),
             "--bind-to", "none", "--map-by", "slot", "--tag-output"]
    if agent is not None:
        argv += ["--mca", "plm_rsh_agent", agent.argv()]
    network = shared_network(names)
    argv += ["--mca", "oob_tcp_if_include", network, "--mca", "btl_tcp_if_include", network]
    for name, value in env.items():
        argv += ["-x", f"{name}={value}"]
    body = program or ("-m", "tfsubmit.remote", "rank", job.entry_script,
                       *job.script_arguments())
    argv += [used[0].python, *body]
    spec = ProcessSpec(
        host=used[0].host, argv=tuple(argv), env={"TFSUBMIT_RUN_ID": run_id},
        cwd=used[0].workdir, role="mpirun", index=0,
        rank_hosts=tuple(node.host for node in ranks),
    )
    hostfile = "".join(f"{host} slots={per_node}\n" for host in hosts)
    return MPIPlan(hostfile, spec)


def plan_preflight(job: TrainingJob, nodes: list[Node], **kwargs) -> MPIPlan:
    """An mpi4py allreduce across every slot, started exactly as the job will be."""
    return plan_horovod(job, nodes, program=("-c", PREFLIGHT), **kwargs)
