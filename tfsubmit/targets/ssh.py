"""The SSH target: the user's own machines, reached with paramiko.

Per run: connect to every host in parallel, pre-flight each (reachable, auth, python,
workdir writable, disk space) and report every failing host at once; upload tfsubmit's
small runtime and the snapshot content-addressed over SFTP (files a host has are not sent
again); build the job environment on each host with the same hash scheme as locally;
start processes in their own session with a pidfile, stream their lines back, signal
their group, and fetch outputs, logs and metrics back, also for failed runs.
Every value that reaches a remote shell goes through `shell_join` (shlex.quote).
"""

from __future__ import annotations

import json
import posixpath
import shlex
import socket
import stat
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import paramiko

from tfsubmit.errors import TargetError, TransientError, UnreachableError
from tfsubmit.runtime.metrics import IMAGES_DIR, METRICS_DIR, is_metrics_file
from tfsubmit.spec.environment import Environment, EnvironmentSpec
from tfsubmit.spec.job import TrainingJob
from tfsubmit.spec.process import LaunchOptions, Node, ProcessSpec, RemoteShell
from tfsubmit.store.cancel import CancelFlag
from tfsubmit.store.objects import ObjectStore, object_path
from tfsubmit.store.package import package_hash, package_sources
from tfsubmit.store.runlog import RunLog
from tfsubmit.system.processes import KEEPER_MARKER, RUN_MARKER
from tfsubmit.targets import sshpool
from tfsubmit.targets.agent import AGENT, ENV_RESULT_PREFIX
from tfsubmit.targets.base import (
    Provisioned,
    ProvisionRequest,
    check_node_count,
    merged_lines,
    refuse_custom_image,
)
from tfsubmit.targets.settings import SSHHost, SSHTargetConfig

LineSink = Callable[[str], None]


def shell_join(argv: list[str]) -> str:
    """The one place that builds remote shell text: every piece quoted."""
    return " ".join(shlex.quote(str(part)) for part in argv)


def bare_python(config: SSHTargetConfig) -> list[str]:
    """The host's Python without site-packages (`-S`): every command tfsubmit runs on a
    host needs only the standard library, and runs for every host and process; it starts in
    20 ms instead of 55 here. An environment build adds site-packages when it looks for uv
    (`envbuild.find_uv`)."""
    return [config.python, "-S"]


# Run by the host's Python before anything in the workdir: argv = WORKDIR RUNTIME HASH
# AGENT-COMMAND...; refuses a workdir another user owns or may write, and runs the agent
# from RUNTIME only when its code hashes to HASH (the algorithm of store.package's
# package_hash, repeated here because the runtime's own copy cannot be trusted yet).
GUARD = """
import json, os, sys
from pathlib import Path
try:  # the built-in module: loading OpenSSL for hashlib costs 10 ms per host and command
    from _sha256 import sha256
except ImportError:
    try:
        from _sha2 import sha256
    except ImportError:
        from hashlib import sha256
wd, rt, want, command = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
def say(**report):
    print(json.dumps(report))
    sys.exit(0)
try:
    wd.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = wd.stat()
except OSError as exc:
    say(error=f"workdir {wd} is not usable: {exc.strerror or exc}")
if info.st_uid != os.getuid():
    say(error=f"workdir {wd} belongs to uid {info.st_uid}, not to the login user (uid "
              f"{os.getuid()}): another user could have planted code there; use a workdir "
              "of your own (the target's `workdir:`)")
if info.st_mode & 0o022:
    say(error=f"workdir {wd} is writable by others (mode {info.st_mode & 0o7777:o}): anyone "
              f"could plant code there; run `chmod go-w {wd}`, or use another workdir")
package = Path(rt) / "tfsubmit"
try:
    here = os.stat(rt).st_ino
except FileNotFoundError:
    say(runtime_hash=None)
if not (package / "__init__.py").is_file():
    say(runtime_hash="incomplete", runtime_ino=here)
try:
    files = sorted(p for p in package.rglob("*.py") if "__pycache__" not in p.parts)
    # Taken before reading: what a resident agent remembers of the runtime it checked
    # (a file changed since has another inode, size or ctime, which no user can set back)
    seen = [(str(p), s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns)
            for p, s in ((p, p.stat()) for p in files)]
    agentd = sys.modules.get("tfsubmit.targets.agentd")  # this is a fork of one
    if seen != getattr(agentd, "VERIFIED", {}).get((rt, want)):
        digest = sha256()
        for path in files:
            digest.update(str(path.relative_to(package)).encode() + b"\\0" + path.read_bytes())
        if digest.hexdigest()[:16] != want:
            say(runtime_hash=digest.hexdigest()[:16], runtime_ino=here)
except OSError:
    say(runtime_hash=None)  # another host sharing this workdir is replacing it: look again
sys.path.insert(0, rt)
if command == ["serve"]:  # the resident agent (agentd.py), which forks the other commands
    from tfsubmit.targets.agentd import serve
    sys.exit(serve(verified={(rt, want): seen}))
from tfsubmit.targets.agent import main
sys.exit(main(command))
"""

# argv = RUNTIME INODE: moves RUNTIME aside and removes it, only if it is still the folder
# GUARD found wrong (another host sharing the workdir may have replaced it since).
SET_ASIDE = """
import os, shutil, sys, uuid
rt, ino = sys.argv[1], int(sys.argv[2])
try:
    if os.stat(rt).st_ino == ino:
        aside = f"{rt}.old-{uuid.uuid4().hex[:8]}"
        os.rename(rt, aside)
        shutil.rmtree(aside, ignore_errors=True)
except FileNotFoundError:
    pass
"""


class HostLostError(TargetError):
    """A host stopped answering while the job ran."""


class _RecordingPolicy(paramiko.MissingHostKeyPolicy):
    """trust_on_first_use: accept an unknown key and append it to known_hosts."""

    def __init__(self, known_hosts: Path, lock: threading.Lock) -> None:
        self.known_hosts = known_hosts
        self.lock = lock

    def missing_host_key(self, client, hostname, key) -> None:
        client.get_host_keys().add(hostname, key.get_name(), key)
        with self.lock:
            self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
            with self.known_hosts.open("a") as handle:
                handle.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")


class Connection:
    """One host: an SSH client, its SFTP channel, an upload counter and a heartbeat."""

    def __init__(self, config: SSHTargetConfig, host: SSHHost, tofu_lock: threading.Lock,
                 *, pooled: bool | None = None):
        self.config = config
        self.host = host
        self.name = host.address
        self.client = paramiko.SSHClient()
        # Through tfsubmit's connection pool (sshpool.py) unless the target keeps none;
        # directly when the pool cannot be reached.
        self.pooled = config.keep_connections > 0 if pooled is None else pooled
        self._tofu_lock = tofu_lock
        self._sftp: paramiko.SFTPClient | None = None
        self.bytes_uploaded = 0
        self.lost: str | None = None
        # The command that starts the host's resident agent (SSHTarget sets it; agentd.py)
        self.agent: str | None = None
        self._heartbeat: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def where(self) -> str:
        return f"{self.config.user}@{self.host.address}:{self.config.port}"

    def connect(self) -> None:
        if self.pooled:
            sock = sshpool.request(self.config, self.host, "connect")  # its errors are ours
            if sock is not None:
                sock.close()
                return
            self.pooled = False
        known = Path(self.config.known_hosts).expanduser()
        if known.exists():
            self.client.load_host_keys(str(known))
        if self.config.trust_on_first_use:
            self.client.set_missing_host_key_policy(_RecordingPolicy(known, self._tofu_lock))
        else:
            self.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        key = Path(self.config.key_file).expanduser()
        if not key.is_file():
            raise TargetError(f"{self.where}: key_file {key} does not exist")
        timeout = self.config.connect_timeout
        hostname = (f"[{self.host.address}]:{self.config.port}" if self.config.port != 22
                    else self.host.address)
        try:
            self.client.connect(
                self.host.address, port=self.config.port, username=self.config.user,
                key_filename=str(key), timeout=timeout, banner_timeout=timeout,
                auth_timeout=timeout, look_for_keys=False, allow_agent=False,
            )
        except paramiko.BadHostKeyException:
            raise TargetError(
                f"{self.where}: the host key CHANGED since it was recorded in {known}; if "
                f"the host was reinstalled, remove the old key with "
                f"`ssh-keygen -R '{hostname}' -f {known}` and connect again"
            ) from None
        except paramiko.AuthenticationException as exc:
            raise TargetError(
                f"{self.where}: authentication failed with key {key} ({exc}); check the "
                f"user and that the public key is in the host's authorized_keys"
            ) from None
        except paramiko.SSHException as exc:
            if "known_hosts" in str(exc):
                raise TargetError(
                    f"{self.where}: unknown host key, refused; trust it with "
                    f"`ssh-keyscan -p {self.config.port} {self.host.address} >> {known}` after "
                    "checking its fingerprint, or set trust_on_first_use: true on the target"
                ) from None
            raise TargetError(f"{self.where}: SSH failed: {exc}") from None
        except (TimeoutError, OSError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or exc)
            raise UnreachableError(
                f"{self.where}: unreachable ({reason}, connect_timeout={timeout:g} s)"
            ) from None
        # Small messages go out at once: with Nagle's algorithm a channel's request, or its
        # EOF, waits for the acknowledgement of the message before it (40 ms, delayed).
        self.client.get_transport().sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @property
    def sftp(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            if self.pooled:
                self._sftp = paramiko.SFTPClient(
                    sshpool.SFTPSocket.adopt(self._pool_request("sftp", timeout=30)))
            else:
                self._sftp = self.client.open_sftp()
        return self._sftp

    def _pool_request(self, kind: str, **fields):
        sock = sshpool.request(self.config, self.host, kind, **fields)
        if sock is None:
            raise TargetError(f"{self.where}: tfsubmit's SSH connection pool does not answer "
                              "(set keep_connections: 0 on the target to connect directly)")
        return sock

    def open_channel(self, command: str, *, timeout: float, combine: bool = False):
        """A channel running `command`: paramiko's, or one relayed by the pool."""
        if self.pooled:
            channel = sshpool.PooledChannel(
                self._pool_request("exec", command=command, timeout=timeout, combine=combine))
            channel.settimeout(timeout)
            return channel
        channel = self.client.get_transport().open_session(timeout=timeout)
        channel.settimeout(timeout)
        if combine:
            channel.set_combine_stderr(True)
        channel.exec_command(command)
        return channel

    def open_python(self, args: list[str], *, env: dict | None = None, timeout: float,
                    combine: bool = False):
        """A channel running `python -S ARGS` (tfsubmit's own commands): forked by the
        host's resident agent where the pool keeps one (agentd.py), else started in a
        session of its own."""
        if self.pooled and self.agent:
            sock = sshpool.request(self.config, self.host, "agent", serve=self.agent,
                                   argv=args, env=env or {}, combine=combine, timeout=timeout)
            if sock is not None:
                channel = sshpool.PooledChannel(sock)
                channel.settimeout(timeout)
                return channel
        command = shell_join([*bare_python(self.config), *args])
        if env:
            command = f"env {shell_join([f'{k}={v}' for k, v in env.items()])} {command}"
        return self.open_channel(command, timeout=timeout, combine=combine)

    def run(self, argv: list[str], *, stdin: str | None = None, env: dict | None = None,
            timeout: float = 120.0) -> str:
        """Run a command (argv, quoted here) and return its stdout; raise on failure."""
        command = shell_join(argv)
        if env:
            command = f"env {shell_join([f'{k}={v}' for k, v in env.items()])} {command}"
        return self._output(argv, lambda: self.open_channel(command, timeout=timeout), stdin)

    def run_python(self, args: list[str], *, stdin: str | None = None,
                   env: dict | None = None, timeout: float = 120.0) -> str:
        """`run` of `python -S ARGS` (see open_python)."""
        return self._output([*bare_python(self.config), *args],
                            lambda: self.open_python(args, env=env, timeout=timeout), stdin)

    def _output(self, argv: list[str], open_channel: Callable, stdin: str | None) -> str:
        try:
            channel = open_channel()
            if stdin is not None:
                channel.sendall(stdin.encode())
            channel.shutdown_write()
            out = _read_all(channel.makefile("rb"))
            err = _read_all(channel.makefile_stderr("rb"))
            code = channel.recv_exit_status()
        except (paramiko.SSHException, OSError, TimeoutError) as exc:
            raise TargetError(f"{self.where}: `{argv[0]} ...` failed: {exc or 'timed out'}") \
                from None
        if code != 0:
            detail = (err or out).strip().splitlines()[-5:]
            raise TargetError(f"{self.where}: `{shell_join(argv)[:120]}` exited {code}: "
                              + " | ".join(detail))
        return out

    def stream_python(self, args: list[str], *, stdin: str, env: dict,
                      on_line: LineSink) -> int:
        channel = self.open_python(args, env=env, timeout=30, combine=True)
        channel.settimeout(None)
        channel.sendall(stdin.encode())
        channel.shutdown_write()
        for raw in channel.makefile("rb"):
            on_line(raw.decode(errors="replace").rstrip("\n"))
        return channel.recv_exit_status()

    def put_bytes(self, data: bytes, path: str) -> None:
        tmp = f"{path}.{id(self)}.tmp"
        with self.sftp.open(tmp, "wb") as handle:
            handle.set_pipelined(True)
            handle.write(data)
        self.sftp.posix_rename(tmp, path)
        self.bytes_uploaded += len(data)

    def start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(self.config.heartbeat_seconds):
                try:
                    # The host agent answers without an sshd session where there is one
                    channel = (self.open_python(["-c", ""], timeout=5) if self.pooled
                               and self.agent else self.open_channel("true", timeout=5))
                    channel.recv_exit_status()
                    channel.close()
                except Exception as exc:  # noqa: BLE001 (any failure means the same)
                    self.lost = f"no answer to the heartbeat ({exc or type(exc).__name__})"
                    return

        self._heartbeat = threading.Thread(target=beat, daemon=True, name=f"hb-{self.name}")
        self._heartbeat.start()

    def close(self) -> None:
        self._stop.set()
        if self._sftp is not None:
            self._sftp.close()
        self.client.close()


def _read_all(handle) -> str:
    return handle.read().decode(errors="replace")


class SSHProcess:
    """A process group started on a host by `python -m tfsubmit.targets.agent run`."""

    ended_by = None  # it ends by itself

    def __init__(self, spec: ProcessSpec, conn: Connection, channel, pidfile: str, rt: str):
        self.spec = spec
        self.pid = 0  # the remote pid is in the pidfile; the channel is our handle
        self._conn = conn
        self._channel = channel
        self._pidfile = pidfile
        self._runtime = rt

    def lines(self) -> Iterator[str]:
        """The process's lines from both its streams, stderr's as StderrLine."""
        def read(stream) -> Iterator[str]:
            return (raw.decode(errors="replace").rstrip("\n") for raw in stream)

        yield from merged_lines(read(self._channel.makefile("rb")),
                                read(self._channel.makefile_stderr("rb")))

    def poll(self) -> int | None:
        if self._channel.exit_status_ready():
            status = self._channel.recv_exit_status()
            if status == -1 and getattr(self._channel, "lost", False):
                raise HostLostError(f"host {self._conn.where} lost: "
                                    f"{self._conn.lost or 'its connection ended'}")
            return status
        if self._conn.lost:
            raise HostLostError(f"host {self._conn.where} lost: {self._conn.lost}")
        return None

    def signal_group(self, sig: int) -> None:
        if self._conn.lost:
            return
        try:
            self._conn.run_python(["-m", AGENT, "signal", self._pidfile, str(int(sig))],
                                  env={"PYTHONPATH": self._runtime}, timeout=10)
        except TargetError:
            pass  # reported by the leftover check that follows every stop


class SSHTarget:
    """The user's machines over SSH; each host builds the job's environment while
    provisioning, with the same hash scheme as the local target."""

    concurrent_start = True  # each start is a request to its host's connection

    def __init__(self, name: str, config: SSHTargetConfig) -> None:
        self.name = name
        self.config = config
        self._tofu_lock = threading.Lock()
        self.connections: dict[str, Connection] = {}
        self.runtime = posixpath.join(config.workdir, "runtime", package_hash())

    # -- provisioning ---------------------------------------------------------------------------

    @property
    def bytes_uploaded(self) -> int:
        return sum(conn.bytes_uploaded for conn in self.connections.values())

    def _each(self, work: Callable[[Connection], object],
              conns: list[Connection] | None = None) -> dict[str, object]:
        """Run `work` on every host in parallel; raise one error naming every failed host."""
        conns = conns or list(self.connections.values())
        results, errors, transient = {}, [], True
        with ThreadPoolExecutor(max_workers=max(1, len(conns))) as pool:
            futures = {conn.name: pool.submit(work, conn) for conn in conns}
            for name, future in futures.items():
                try:
                    results[name] = future.result()
                except TargetError as exc:
                    errors.append(str(exc))
                    transient = transient and isinstance(exc, TransientError)
                except Exception as exc:  # noqa: BLE001 (name the host whatever happened)
                    errors.append(f"{name}: {type(exc).__name__}: {exc}")
                    transient = False
        if errors:  # worth a retry only when every host failed for a reason that may pass
            raise (UnreachableError if transient else TargetError)(
                f"compute target {self.name!r}: {len(errors)} of {len(conns)} host(s) failed:\n"
                + "\n".join(f"  - {e}" for e in errors)
            )
        return results

    def connect(self, digests: list[str] = ()) -> dict[str, dict]:
        """Connect to every host and pre-flight it; returns each host's report, whose
        `missing` lists which of `digests` the host's object store lacks."""
        conns = [Connection(self.config, host, self._tofu_lock) for host in self.config.hosts]

        def check(conn: Connection) -> dict:
            conn.connect()
            conn.agent = self._serve_command()
            self.connections[conn.name] = conn
            return self._preflight(conn, "\n".join(digests))

        return self._each(check, conns)

    def _serve_command(self) -> str:
        """Starts the host's resident agent, through the guard like any other command."""
        wd = self.config.workdir
        return shell_join([*bare_python(self.config), "-c", GUARD, wd, self.runtime,
                           package_hash(), "serve"])

    def _preflight(self, conn: Connection, digests: str) -> dict:
        """One command on the warm path. Nothing in the workdir runs before GUARD (sent
        whole, run by the host's own Python) has checked that the workdir is the login
        user's alone and that the runtime there hashes to this tfsubmit's code."""
        wd = self.config.workdir
        guard = ["-c", GUARD, wd, self.runtime, package_hash(), "preflight", wd,
                 str(self.config.min_free_mb)]
        try:
            report = json.loads(conn.run_python(guard, stdin=digests, timeout=60))
        except (TargetError, ValueError) as exc:
            raise TargetError(f"{conn.where}: python {self.config.python!r} cannot check the "
                              f"workdir ({exc}); set `python:` on the target") from None
        # This version's runtime is not there, or is not what tfsubmit uploaded (changed
        # since, or planted): never run it; put it aside and install it afresh. Hosts may
        # share the workdir (NFS, or test hosts on one machine): a runtime is only ever
        # installed whole, by a rename, and the check runs again until it passes.
        replaced = None
        for attempt in range(3):
            self._check(conn, report)
            if report.get("ran"):
                if replaced:
                    report["replaced_runtime"] = replaced
                return report
            if report.get("runtime_ino"):
                replaced = report["runtime_hash"]
                conn.run_python(["-c", SET_ASIDE, self.runtime, str(report["runtime_ino"])],
                                timeout=60)
            if attempt == 0:
                try:
                    conn.run(["mkdir", "-p", posixpath.join(wd, "objects"),
                              posixpath.dirname(self.runtime)], timeout=30)
                except TargetError as exc:
                    raise TargetError(f"{conn.where}: workdir {wd} is not writable: {exc}") \
                        from None
            self._install_runtime(conn)
            try:
                report = json.loads(conn.run_python(guard, stdin=digests, timeout=60))
            except (TargetError, ValueError) as exc:
                raise TargetError(f"{conn.where}: python {self.config.python!r} does not run "
                                  f"tfsubmit's helper ({exc}); set `python:` on the target") \
                    from None
        self._check(conn, report)
        if report.get("ran"):
            return {**report, "replaced_runtime": replaced} if replaced else report
        raise TargetError(f"{conn.where}: tfsubmit's runtime in {self.runtime} does not "
                          f"match its hash after upload (hash {report.get('runtime_hash')}); "
                          "remove that folder and retry")

    @staticmethod
    def _check(conn: Connection, report: dict) -> dict:
        if report.get("error"):
            raise TargetError(f"{conn.where}: {report['error']}")
        return report

    def _install_runtime(self, conn: Connection) -> None:
        """Upload this tfsubmit's code into a folder of its own, then rename it into place:
        a runtime is there whole or not at all, whoever else installs it at the same time."""
        try:
            conn.sftp.stat(posixpath.join(self.runtime, "tfsubmit", "__init__.py"))
            return  # installed meanwhile by another host sharing this workdir
        except FileNotFoundError:
            pass
        part = f"{self.runtime}.part-{uuid.uuid4().hex[:8]}"
        package, sources = package_sources()
        for path in sources:
            target = posixpath.join(part, path.relative_to(package.parent).as_posix())
            _sftp_makedirs(conn.sftp, posixpath.dirname(target))
            conn.put_bytes(path.read_bytes(), target)
        try:
            conn.sftp.posix_rename(part, self.runtime)
        except OSError:  # another host sharing this workdir installed it first
            conn.run(["rm", "-rf", part], timeout=60)

    def hosts(self) -> list[Node]:
        return [Node(host=h.address, workdir="", slots=h.slots, gpus=h.gpus, address=h.address)
                for h in self.config.hosts]

    def admit(self, job: TrainingJob) -> None:
        refuse_custom_image(job, self.name)
        check_node_count(job, self.name, len(self.hosts()))

    def prepare_environment(self, job: TrainingJob, spec: EnvironmentSpec, *, cache: Path,
                            log: RunLog, cancel: CancelFlag) -> Environment:
        """Each host builds (or reuses) its own while provisioning: only the hash is known."""
        refuse_custom_image(job, self.name)
        log.event(f"environment {spec.hash[:16]}: built or reused on each host of "
                  f"{self.name!r} while provisioning")
        return Environment(spec.hash, path="", python="", reused=False, freeze="")

    def provision(self, request: ProvisionRequest) -> Provisioned:
        log = request.log.event
        log(f"connecting to {len(self.config.hosts)} host(s) of {self.name!r}")
        snapshot = request.snapshot
        reports = self.connect(sorted({entry.sha256 for entry in snapshot.files.values()}))
        for name, report in reports.items():
            log(f"host {name}: ok (python {report['version']}, {report['free_mb']} MB free)")
            if report.get("replaced_runtime"):
                log(f"host {name}: tfsubmit's runtime in {self.runtime} did not match its hash "
                    f"({report['replaced_runtime']}, changed or planted); replaced it")
        manifest = snapshot.manifest()

        def run_dir(host: str) -> str:
            # One folder per host, even where hosts share a file system (NFS homes).
            return posixpath.join(self.config.workdir, "runs", request.run_id, host)

        def stage(conn: Connection) -> Environment:
            report = reports[conn.name]
            self._upload_objects(conn, report["missing"], request.store)
            stage_request = {"objects": posixpath.join(self.config.workdir, "objects"),
                             "dest": run_dir(conn.name), "manifest": manifest,
                             "cache": self.config.env_cache,
                             "env": _env_request(request.env_spec, report["version"])}
            return self._env_command(conn, "stage", [], stage_request, log)

        envs = self._each(stage)
        nodes = [
            Node(host=host.address, workdir=run_dir(host.address), slots=host.slots,
                 gpus=host.gpus, python=envs[host.address].python, runtime=self.runtime)
            for host in self.config.hosts
        ]
        for conn in self.connections.values():
            conn.start_heartbeat()
        return Provisioned(nodes, envs, uploaded_bytes=self.bytes_uploaded)

    def _upload_objects(self, conn: Connection, missing: list[str], store: ObjectStore) -> None:
        objects = posixpath.join(self.config.workdir, "objects")
        for digest in missing:
            path = posixpath.join(objects, object_path(digest))
            _sftp_makedirs(conn.sftp, posixpath.dirname(path))
            conn.put_bytes(store.path_for(digest).read_bytes(), path)

    def _build_env(self, conn: Connection, env_spec: EnvironmentSpec, version: str,
                   log: Callable[[str], None]) -> Environment:
        return self._env_command(conn, "build-env", [self.config.env_cache],
                                 _env_request(env_spec, version), log)

    def _env_command(self, conn: Connection, command: str, args: list[str], request: dict,
                     log: Callable[[str], None]) -> Environment:
        """Run a remote helper command that ends by building or finding the environment."""
        result: dict = {}

        def on_line(line: str) -> None:
            if line.startswith(ENV_RESULT_PREFIX):
                result.update(json.loads(line[len(ENV_RESULT_PREFIX):]))
            else:
                log(f"env@{conn.name}: {line}")

        code = conn.stream_python(["-m", AGENT, command, *args], stdin=json.dumps(request),
                                  env={"PYTHONPATH": self.runtime}, on_line=on_line)
        if code != 0 or not result:
            raise TargetError(f"{conn.where}: `{command}` failed (exit code {code}) while "
                              "preparing the run or its environment; see the lines above")
        return Environment(result["hash"], result["path"], result["python"], result["reused"],
                           result["freeze"], result.get("build_seconds", 0.0))

    # -- processes ------------------------------------------------------------------------------

    def start(self, spec: ProcessSpec) -> SSHProcess:
        conn = self.connections[spec.host]
        pidfile = posixpath.join(spec.cwd, METRICS_DIR, f"{spec.role}-{spec.index}.pid")
        run_id = spec.env.get(RUN_MARKER, "")
        request = {"argv": list(spec.argv), "env": dict(spec.env), "cwd": spec.cwd,
                   "pidfile": pidfile, "path": posixpath.dirname(spec.argv[0]),
                   "keepers": self._keepers(run_id) if run_id else None}
        # The agent holds the task as its subreaper; found by the run's `ps` (its marker, or
        # its note in the keepers folder when the host agent forked it) with what it
        # adopted (a double-forked helper with an empty environment, say).
        channel = conn.open_python(
            ["-m", AGENT, "run"], timeout=30, combine=False,  # stderr apart: its lines WARN
            env={"PYTHONPATH": self.runtime, KEEPER_MARKER: run_id})
        channel.settimeout(None)
        channel.sendall((json.dumps(request) + "\n").encode())
        channel.shutdown_write()
        return SSHProcess(spec, conn, channel, pidfile, self.runtime)

    def _keepers(self, run_id: str) -> str:
        """Where a run's task keepers register on a host (agent.py's `run` and `ps`)."""
        return posixpath.join(self.config.workdir, "keepers", run_id)

    def attach(self, run_id: str, nodes: list[Node]) -> list[str]:
        """Connect to the target's hosts again (those that answer)."""
        try:
            self.connect()
        except TargetError as exc:  # the hosts that answered are connected
            return [str(exc)]
        return []

    def leftovers(self, run_id: str) -> list[tuple[str, int]]:
        found = []
        for conn in self.connections.values():
            if conn.lost:
                continue
            try:
                out = conn.run_python(["-m", AGENT, "ps", run_id, self._keepers(run_id)],
                                      env={"PYTHONPATH": self.runtime}, timeout=15)
            except TargetError as exc:  # unreachable now: skip it, check the others
                conn.lost = str(exc)
                continue
            found += [(conn.name, pid) for pid in json.loads(out)]
        return found

    def kill(self, processes: list[tuple[str, int]]) -> None:
        for host in {host for host, _ in processes}:
            pids = [str(pid) for h, pid in processes if h == host]
            self.connections[host].run(["kill", "-KILL", *pids], timeout=15)

    def processes(self, run_id: str) -> dict[str, list[int]]:
        """Live processes of the run on each reachable host (what `ps` there shows)."""
        result: dict[str, list[int]] = {}
        for host, pid in self.leftovers(run_id):
            result.setdefault(host, []).append(pid)
        return result

    # -- outputs --------------------------------------------------------------------------------

    def collect(self, node: Node, dest: Path) -> list[str]:
        """Fetch outputs/, logs/ and metrics of `node` into `dest`; returns problems."""
        conn = self.connections.get(node.host)
        if conn is None or conn.lost:
            return [f"{node.host}: unreachable, its outputs stay on the host in {node.workdir}"]
        problems = []
        for sub in ("outputs", "logs", posixpath.join(METRICS_DIR, IMAGES_DIR)):
            try:
                _sftp_download_tree(conn.sftp, posixpath.join(node.workdir, sub), dest / sub)
            except (OSError, paramiko.SSHException) as exc:
                problems.append(f"{node.host}: fetching {sub}/ failed: {exc}")
        metrics_dir = posixpath.join(node.workdir, METRICS_DIR)
        try:
            for name in conn.sftp.listdir(metrics_dir):
                if is_metrics_file(name):
                    (dest / METRICS_DIR).mkdir(parents=True, exist_ok=True)
                    conn.sftp.get(posixpath.join(metrics_dir, name), str(dest / METRICS_DIR / name))
        except (OSError, paramiko.SSHException) as exc:
            problems.append(f"{node.host}: fetching metrics failed: {exc}")
        return problems

    def launch_options(self) -> LaunchOptions:
        """mpirun on the first host reaches the others with this target's key, port and
        known hosts (the key and known_hosts must exist at the same paths there)."""
        shell = RemoteShell(key_file=str(Path(self.config.key_file).expanduser()),
                            port=self.config.port,
                            known_hosts=str(Path(self.config.known_hosts).expanduser()))
        return LaunchOptions(as_root=self.config.user == "root", remote_shell=shell)

    def metric_files(self, nodes: list[Node]) -> list:
        """Metrics of SSH runs arrive when the outputs are collected."""
        return []

    def last_activity(self, nodes: list[Node]) -> float:
        """Metrics of SSH runs arrive at the end; the watchdog relies on log lines."""
        return 0.0

    def close(self) -> None:
        for conn in self.connections.values():
            conn.close()


def _env_request(env_spec: EnvironmentSpec, version: str) -> dict:
    """The environment spec for a host whose Python is `version`."""
    return {"python_version": version, "requirements": list(env_spec.requirements),
            "conda_packages": list(env_spec.conda_packages),
            "local_content": list(env_spec.local_content)}


def _sftp_makedirs(sftp: paramiko.SFTPClient, path: str) -> None:
    missing = []
    while path and path != "/":
        try:
            sftp.stat(path)
            break
        except FileNotFoundError:
            missing.append(path)
            path = posixpath.dirname(path)
    for folder in reversed(missing):
        try:
            sftp.mkdir(folder)
        except OSError:
            sftp.stat(folder)  # made meanwhile by a parallel upload: fine


def _sftp_download_tree(sftp: paramiko.SFTPClient, remote: str, local: Path) -> None:
    try:
        entries = sftp.listdir_attr(remote)
    except FileNotFoundError:
        return
    local.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        source = posixpath.join(remote, entry.filename)
        if stat.S_ISDIR(entry.st_mode or 0):
            _sftp_download_tree(sftp, source, local / entry.filename)
        else:
            sftp.get(source, str(local / entry.filename))

