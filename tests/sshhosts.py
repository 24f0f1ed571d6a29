"""Real sshd test hosts on this machine: one sshd per loopback address 127.0.0.2..N.

Used by the pytest fixtures, and as a script:

    python tests/sshhosts.py start N DIR    # prints the targets.yaml to use, leaves them running
    python tests/sshhosts.py stop DIR       # stops them by PID

Each host has its own generated host key; one user key is authorised on all of them and a
known_hosts file lists them. openssh-server is installed with apt-get when missing.
Traffic goes to loopback only, by IP address (no DNS). The network-namespace variant
(`NamespaceHosts`) puts each sshd in its own namespace behind a veth pair on a bridge, so a
test can cut one host off by taking its link down.
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

SSHD = "/usr/sbin/sshd"
PORT = 2222
BRIDGE = "tfsbr0"
NETNS_PREFIX = "tfs-host"
NETNS_SUBNET = "10.213.77"  # our own namespaces only; nothing else is ever addressed


def ensure_openssh() -> None:
    if Path(SSHD).exists() and shutil.which("ssh-keygen"):
        return
    apt = ["apt-get", "-o", "DPkg::Lock::Timeout=600", "-y", "-q"]
    subprocess.run([*apt, "update", "-qq"], check=True)
    subprocess.run([*apt, "install", "--no-install-recommends", "openssh-server",
                    "openssh-client"], check=True, env={**os.environ,
                                                        "DEBIAN_FRONTEND": "noninteractive"})


def _keygen(path: Path) -> None:
    if not path.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                       check=True)


@dataclass
class TestHosts:
    """N sshd processes, each listening on its own address."""

    root: Path
    addresses: list[str]
    port: int = PORT
    pids: list[int] = field(default_factory=list)
    netns: list[str | None] = field(default_factory=list)
    set_env: dict[str, str] = field(default_factory=dict)  # for every session on the hosts
    sshd_options: list[str] = field(default_factory=list)  # more sshd_config lines

    @property
    def user_key(self) -> Path:
        return self.root / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    def start(self) -> TestHosts:
        ensure_openssh()
        self.root.mkdir(parents=True, exist_ok=True)
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
        _keygen(self.user_key)
        shutil.copy(self.user_key.with_suffix(".pub"), self.root / "authorized_keys")
        known = []
        if not self.netns:
            self.netns = [None] * len(self.addresses)
        for index, (address, ns) in enumerate(zip(self.addresses, self.netns, strict=True)):
            host_key = self.root / f"host{index}_ed25519"
            _keygen(host_key)
            config = self.root / f"sshd{index}.conf"
            config.write_text("\n".join([
                f"ListenAddress {address}:{self.port}",
                f"HostKey {host_key}",
                f"PidFile {self.root / f'sshd{index}.pid'}",
                f"AuthorizedKeysFile {self.root / 'authorized_keys'}",
                "PermitRootLogin prohibit-password",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "StrictModes no",
                "UsePAM no",
                "UseDNS no",
                "SetEnv " + " ".join(f"{k}={v}" for k, v in {"SHLVL": "1", **self.set_env}.items()),
                "MaxStartups 100:30:200",
                "MaxSessions 100",
                "LogLevel ERROR",
                "Subsystem sftp internal-sftp",
                *self.sshd_options,
                "",
            ]))
            argv = [SSHD, "-D", "-e", "-f", str(config)]
            if ns:
                argv = ["ip", "netns", "exec", ns, *argv]
            log = (self.root / f"sshd{index}.log").open("ab")
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
            self.pids.append(process.pid)
            public = host_key.with_suffix(".pub").read_text().split()
            known.append(f"[{address}]:{self.port} {public[0]} {public[1]}")
        self.known_hosts.write_text("\n".join(known) + "\n")
        self._wait_listening()
        return self

    def _wait_listening(self, timeout: float = 15.0) -> None:
        import socket

        deadline = time.monotonic() + timeout
        pending = list(self.addresses)
        while pending and time.monotonic() < deadline:
            for address in list(pending):
                try:
                    with socket.create_connection((address, self.port), timeout=0.5):
                        pending.remove(address)
                except OSError:
                    pass
            time.sleep(0.05)
        if pending:
            logs = "".join((self.root / f"sshd{i}.log").read_text()
                           for i in range(len(self.addresses)))
            raise RuntimeError(f"sshd test hosts {pending} did not start: {logs}")

    def stop(self) -> None:
        # tfsubmit's SSH connection pool keeps connections to these hosts for later runs:
        # close them, as their sshd session processes outlive the listener stopped here.
        from tfsubmit.targets import sshpool

        for address in self.addresses:
            sshpool.call("drop", address=address, port=self.port)
        for pid in self.pids:
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for pid in self.pids:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        self.pids.clear()

    def target_config(self, **extra) -> dict:
        return {
            "type": "ssh",
            "hosts": [{"address": a, "slots": 2} for a in self.addresses],
            "user": "root",
            "port": self.port,
            "key_file": str(self.user_key),
            "known_hosts": str(self.known_hosts),
            "workdir": str(self.root / "remote"),
            "python": sys.executable,
            **extra,
        }


def loopback_hosts(root: Path, count: int, first: int = 2) -> TestHosts:
    return TestHosts(root, [f"127.0.0.{first + i}" for i in range(count)])


class NamespaceHosts(TestHosts):
    """Test hosts each in its own network namespace, joined by a bridge; `cut(i)` drops one."""

    def __init__(self, root: Path, count: int) -> None:
        addresses = [f"{NETNS_SUBNET}.{10 + i}" for i in range(count)]
        super().__init__(root, addresses, netns=[f"{NETNS_PREFIX}{i}" for i in range(count)])

    def start(self) -> NamespaceHosts:
        self._teardown_network()
        run = _ip
        run("link", "add", BRIDGE, "type", "bridge")
        run("addr", "add", f"{NETNS_SUBNET}.1/24", "dev", BRIDGE)
        run("link", "set", BRIDGE, "up")
        for i, (ns, address) in enumerate(zip(self.netns, self.addresses, strict=True)):
            run("netns", "add", ns)
            run("link", "add", f"tfsv{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            run("link", "set", f"tfsv{i}", "master", BRIDGE)
            run("link", "set", f"tfsv{i}", "up")
            run("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            run("-n", ns, "link", "set", "eth0", "up")
            run("-n", ns, "link", "set", "lo", "up")
        return super().start()

    def cut(self, index: int) -> None:
        """Take host `index` off the network: its link goes down, its sshd stays up."""
        _ip("link", "set", f"tfsv{index}", "down")

    def stop(self) -> None:
        super().stop()
        self._stop_sessions()
        self._teardown_network()

    def _stop_sessions(self) -> None:
        """sshd serves each connection from a process in a session of its own, which the
        listener's killpg misses; with its namespace gone no FIN would ever end it."""
        for ns in self.netns:
            kill_namespace(ns)

    def _teardown_network(self) -> None:
        for i, ns in enumerate(self.netns):
            subprocess.run(["ip", "link", "del", f"tfsv{i}"], capture_output=True)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)


def kill_namespace(ns: str) -> None:
    """SIGKILL every process in network namespace `ns`."""
    listed = subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                            text=True).stdout.split()
    for pid in listed:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def main(argv: list[str]) -> int:
    import yaml

    if argv[:1] == ["start"]:
        hosts = loopback_hosts(Path(argv[2]).resolve(), int(argv[1])).start()
        (hosts.root / "pids").write_text(" ".join(map(str, hosts.pids)))
        print(yaml.safe_dump({"test-hosts": hosts.target_config()}, sort_keys=False))
        return 0
    if argv[:1] == ["stop"]:
        pids = (Path(argv[1]) / "pids").read_text().split()
        for pid in pids:
            try:
                os.killpg(int(pid), signal.SIGTERM)
            except ProcessLookupError:
                pass
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
