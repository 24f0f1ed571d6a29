"""A real Slurm cluster on this machine: munged, slurmctld, and one slurmd per compute node,
each node in its own network and UTS namespace (its own hostname and address).

Used by the pytest fixtures, and as a script:

    python tests/slurmcluster.py start N DIR   # prints the SLURM_CONF to use, leaves it running
    python tests/slurmcluster.py stop DIR      # scontrol shutdown, then kill what is left by PID

Layout (see ../shared/SLURM.md for the measured facts behind it): nodes `node1..nodeN` at
10.213.88.11.. in namespaces `tfs-slurm-nodeI`, each joined by a veth to a bridge that lives
in a "switch" namespace (`tfs-slurm-sw`, out of the root namespace, where a dockerd's FORWARD
policy would cut it); the controller is one veth in the root namespace at 10.213.88.1.
Every daemon and client reaches munged through its socket in DIR. slurm-wlm and munge are
installed with apt-get when missing. Every process is stopped by PID; nothing is left.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from sshhosts import kill_namespace

SUBNET = "10.213.88"  # this fixture's own /24 (the SSH namespace hosts use 10.213.77)
PREFIX = "tfs-slurm"
SWITCH = f"{PREFIX}-sw"
ROOT_VETH = "tfslurm0"
CTLD_PORT = 16817
SLURMD_PORT = 16818


def ensure_slurm() -> None:
    if all(shutil.which(tool) for tool in ("slurmctld", "slurmd", "munged", "sbatch")):
        return
    apt = ["apt-get", "-o", "DPkg::Lock::Timeout=600", "-y", "-q"]
    subprocess.run([*apt, "update", "-qq"], check=True)
    subprocess.run([*apt, "install", "--no-install-recommends", "slurm-wlm", "munge"],
                   check=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@dataclass
class SlurmCluster:
    """A controller and `count` compute nodes with `cpus` CPUs each."""

    root: Path
    count: int = 2
    cpus: int = 2
    pids: list[int] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """What a Slurm client needs: only SLURM_CONF."""
        return {"SLURM_CONF": str(self.conf)}

    @property
    def nodes(self) -> list[str]:
        return [f"node{i + 1}" for i in range(self.count)]

    def netns(self, node: str) -> str:
        return f"{PREFIX}-{node}"

    def address(self, node: str) -> str:
        return f"{SUBNET}.{10 + int(node[4:])}"

    # -- start ---------------------------------------------------------------------------------

    def start(self) -> SlurmCluster:
        ensure_slurm()
        self._teardown_network()
        for name in ("state", "spool", "tmp", "run", "log", "munge"):
            (self.root / name).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        os.chmod(self.root / "munge", 0o755)  # munged refuses a socket folder others can't enter
        for node in self.nodes:
            (self.root / "tmp" / node).mkdir(exist_ok=True)
        self._network()
        self._write_config()
        self._start_munge()
        self._start_controller()
        for node in self.nodes:
            self._start_slurmd(node)
        self.wait_idle()
        return self

    def _network(self) -> None:
        _ip("netns", "add", SWITCH)
        _ip("-n", SWITCH, "link", "add", "br0", "type", "bridge")
        _ip("-n", SWITCH, "link", "set", "br0", "up")
        _ip("link", "add", ROOT_VETH, "type", "veth", "peer", "name", "ctl", "netns", SWITCH)
        _ip("addr", "add", f"{SUBNET}.1/24", "dev", ROOT_VETH)
        _ip("link", "set", ROOT_VETH, "up")
        _ip("-n", SWITCH, "link", "set", "ctl", "master", "br0")
        _ip("-n", SWITCH, "link", "set", "ctl", "up")
        for node in self.nodes:
            ns = self.netns(node)
            _ip("netns", "add", ns)
            _ip("-n", SWITCH, "link", "add", node, "type", "veth", "peer", "name", "eth0",
                "netns", ns)
            _ip("-n", SWITCH, "link", "set", node, "master", "br0")
            _ip("-n", SWITCH, "link", "set", node, "up")
            _ip("-n", ns, "addr", "add", f"{self.address(node)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        hosts = ["127.0.0.1 localhost", f"{SUBNET}.1 {_short_hostname()}",
                 *(f"{self.address(node)} {node}" for node in self.nodes)]
        (self.root / "hosts").write_text("\n".join(hosts) + "\n")

    def _write_config(self) -> None:
        state = self.root
        self.conf.write_text("\n".join([
            "ClusterName=tfsim",
            f"SlurmctldHost={_short_hostname()}({SUBNET}.1)",
            f"SlurmctldPort={CTLD_PORT}",
            f"SlurmdPort={SLURMD_PORT}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            # A requeued job may start again once its old credential expired: 120 s by
            # default, 10 s here (the least Slurm takes) so the requeue test is quick.
            f"AuthInfo=socket={state}/munge/munge.socket,cred_expire=10",
            f"StateSaveLocation={state}/state",
            f"SlurmdSpoolDir={state}/spool/%n",
            f"TmpFS={state}/tmp/%n",
            f"SlurmctldPidFile={state}/run/slurmctld.pid",
            f"SlurmdPidFile={state}/run/slurmd-%n.pid",
            f"SlurmctldLogFile={state}/log/slurmctld.log",
            f"SlurmdLogFile={state}/log/slurmd-%n.log",
            "MailProg=/bin/true",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SchedulerType=sched/backfill",
            "MpiDefault=none",
            "ReturnToService=2",
            "SlurmdParameters=config_overrides",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/filetxt",
            f"JobCompLoc={state}/log/jobcomp.txt",
            "MinJobAge=600",
            "KillWait=5",
            "InactiveLimit=0",
            "SchedulerParameters=sched_interval=1",
            f"NodeName=node[1-{self.count}] NodeAddr={SUBNET}.[11-{10 + self.count}] "
            f"CPUs={self.cpus} RealMemory=2000 State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
            "",
        ]))

    def _spawn(self, argv: list[str], log: str) -> int:
        out = (self.root / "log" / log).open("ab")
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True,
                                   env={**os.environ, **self.env})
        self.pids.append(process.pid)
        return process.pid

    def _start_munge(self) -> None:
        key = self.root / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
            os.chmod(key, 0o400)
        munge = self.root / "munge"
        self._spawn(["munged", "--foreground", "--force", f"--key-file={key}",
                     f"--socket={munge}/munge.socket", f"--pid-file={munge}/munged.pid",
                     f"--log-file={self.root}/log/munged.log",
                     f"--seed-file={munge}/munged.seed"], "munged.out")
        _wait(lambda: (munge / "munge.socket").exists(), 20, "munged did not start",
              self.root / "log" / "munged.out")

    def _start_controller(self) -> None:
        self._spawn(["slurmctld", "-D", "-i", "-f", str(self.conf)], "slurmctld.out")
        _wait(lambda: self._client(["scontrol", "ping"]).returncode == 0, 30,
              "slurmctld did not answer", self.root / "log" / "slurmctld.log")

    def _start_slurmd(self, node: str) -> None:
        # Not `ip netns exec`: it remounts /sys and slurmd's cgroup probe fails (SLURM.md).
        inner = (f"mount --bind {self.root}/hosts /etc/hosts && hostname {node} && "
                 f"exec slurmd -D -N {node} -f {self.conf}")
        self._spawn(["nsenter", f"--net=/run/netns/{self.netns(node)}", "unshare", "--uts",
                     "--mount", "--propagation", "private", "sh", "-c", inner],
                    f"slurmd-{node}.out")

    def _client(self, argv: list[str], timeout: float = 20) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                  env={**os.environ, **self.env})
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(argv, 124, "", f"timed out after {timeout} s")

    def wait_idle(self, timeout: float = 60) -> None:
        """Every node up and idle (no job on it)."""
        def idle() -> bool:
            out = self._client(["sinfo", "-h", "-N", "-o", "%N %t"]).stdout.split("\n")
            states = dict(line.split() for line in out if line.strip())
            return len(states) == self.count and all(s == "idle" for s in states.values())

        _wait(idle, timeout, "Slurm nodes did not become idle", self.root / "log")

    def scontrol(self, *args: str) -> str:
        result = self._client(["scontrol", *args])
        if result.returncode:
            raise RuntimeError(f"scontrol {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def resume(self, node: str) -> None:
        """Back in service (its slurmd may have re-registered it already)."""
        self._client(["scontrol", "update", f"nodename={node}", "state=resume"])
        self.wait_idle()

    def jobs(self) -> list[str]:
        """Ids of the jobs in the queue (pending, running or completing)."""
        return self._client(["squeue", "-h", "-o", "%i"]).stdout.split()

    # -- stop ----------------------------------------------------------------------------------

    def stop(self) -> None:
        self._client(["scancel", "--full", "-u", "root"], timeout=10)
        self._client(["scontrol", "shutdown"], timeout=10)
        for pid in self.pids:
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        for pid in self.pids:
            while time.monotonic() < deadline and not _gone(pid):
                time.sleep(0.05)
            if not _gone(pid):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                while not _gone(pid):
                    time.sleep(0.05)
        self.pids.clear()
        self._kill_namespaces()
        self._teardown_network()

    def _kill_namespaces(self) -> None:
        """Whatever still runs in a node's namespace (a task that escaped its step)."""
        for node in self.nodes:
            kill_namespace(self.netns(node))

    def _teardown_network(self) -> None:
        for node in self.nodes:
            subprocess.run(["ip", "netns", "del", self.netns(node)], capture_output=True)
        subprocess.run(["ip", "netns", "del", SWITCH], capture_output=True)
        subprocess.run(["ip", "link", "del", ROOT_VETH], capture_output=True)


def _gone(pid: int) -> bool:
    """Ended (and reaped, when it is our child; `stop` from the script only waits)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done != 0
    except ChildProcessError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"


def _short_hostname() -> str:
    return os.uname().nodename.split(".")[0]


def _wait(condition, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    detail = ""
    if log.is_file():
        detail = log.read_text()[-2000:]
    elif log.is_dir():
        detail = "".join(p.read_text()[-800:] for p in sorted(log.glob("*.log")))
    raise RuntimeError(f"{what} within {timeout:g} s: {detail}")


def main(argv: list[str]) -> int:
    if argv[:1] == ["start"]:
        cluster = SlurmCluster(Path(argv[2]).resolve(), int(argv[1])).start()
        (cluster.root / "pids").write_text(" ".join(map(str, cluster.pids)))
        print(f"export SLURM_CONF={cluster.conf}")
        return 0
    if argv[:1] == ["stop"]:
        root = Path(argv[1]).resolve()
        cluster = SlurmCluster(root, len(list((root / "spool").glob("*"))) or 2)
        cluster.pids = [int(p) for p in (root / "pids").read_text().split()]
        cluster.stop()
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
