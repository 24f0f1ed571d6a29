"""Kept SSH connections: what lets a second submission to the same hosts skip the key exchange.

Each run has a runner process of its own, so connections made by one run die with it. The
pool is one long-lived process per login user and tfsubmit version that makes and keeps the
SSH connections (paramiko transports) for every run; a run asks it for a channel (a command,
or the SFTP subsystem) over a Unix socket and gets the channel's bytes relayed. A connection
nobody used for its target's `keep_connections` seconds is closed, and the pool exits once it
holds none. It is what OpenSSH's ControlMaster/ControlPersist does for the `ssh` command.

- The socket is in Linux's abstract namespace (nothing on disk to go stale) and the pool
  answers only processes of its own user (SO_PEERCRED).
- Connecting (host key policy, authentication, the error messages) is `ssh.Connection`'s own
  code, run in the pool; a connection is keyed by everything that decides who is trusted and
  who logs in (address, port, user, key file, known_hosts, trust_on_first_use).
- sshd allows 10 sessions per connection by default: the pool opens another connection to a
  host rather than put more than MAX_CHANNELS channels on one.
- A kept connection that fails to open a channel is closed and one fresh connection is tried,
  so a host that went away costs at most `connect_timeout` more than it did before.
- A run that cannot reach the pool (it could not start, say) connects directly as before.

Protocol, one Unix connection per request: a JSON message (4 bytes of length, then the
JSON) {"kind", "config", "host", ...}; the answer is one ({"ok": true} or {"error": "..."});
then, for "exec", the client's bytes
are the command's stdin (shutdown = EOF) and the pool's are frames (1 byte kind, 4 bytes
length, data): o stdout, e stderr, k keep-alive, x exit status; for "sftp" the bytes are the
SFTP subsystem's, both ways, unframed.
"""

from __future__ import annotations

import io
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import paramiko

from tfsubmit.errors import TargetError
from tfsubmit.service.processes import KEEPER_MARKER, RUN_MARKER, SERVICE_MARKER
from tfsubmit.store.package import package_hash

MAX_CHANNELS = 8  # per connection: under sshd's default MaxSessions (10)
KEEPALIVE_SECONDS = 2.0  # a silent channel still sends a frame, to notice a client gone
START_SECONDS = 10.0
_HEADER = struct.Struct(">cI")


def address() -> str:
    return f"\0tfsubmit-sshpool-{os.getuid()}-{package_hash()}"


def connection_key(config, host) -> tuple:
    return (host.address, config.port, config.user, str(Path(config.key_file).expanduser()),
            str(Path(config.known_hosts).expanduser()), config.trust_on_first_use)


# -- the client side (in each runner) -------------------------------------------------------------


def request(config, host, kind: str, *, start: bool = True, **fields) -> socket.socket | None:
    """Send one request; returns the socket once the pool said ok, None when there is no
    pool (and `start` is false, or it could not be started); raises TargetError with the
    pool's error (a connection it could not make, with `ssh.Connection`'s message)."""
    sock = _dial(start)
    if sock is None:
        return None
    try:
        _send_message(sock, {"kind": kind, "config": config.model_dump(),
                             "host": host.model_dump(), **fields})
        answer = _recv_message(sock) or {}
    except (OSError, ValueError):
        sock.close()
        return None
    if "error" in answer:
        sock.close()
        raise TargetError(answer["error"])
    if not answer.get("ok"):
        sock.close()
        return None
    return sock


def _dial(start: bool) -> socket.socket | None:
    deadline = time.monotonic() + START_SECONDS
    spawned = False
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(address())
            return sock
        except OSError:
            sock.close()
        if not start or time.monotonic() > deadline:
            return None
        if not spawned:
            _spawn()
            spawned = True
        time.sleep(0.02)


def _spawn() -> None:
    """Start the pool, detached: its own session, none of a run's markers (a run's leftover
    check must never take it for the run's), tfsubmit's service marker."""
    env = {k: v for k, v in os.environ.items() if k not in (RUN_MARKER, KEEPER_MARKER)}
    env[SERVICE_MARKER] = "ssh-pool"
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    subprocess.Popen([sys.executable, "-m", "tfsubmit.targets.sshpool"], env=env,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)


def _send_message(sock: socket.socket, message: dict) -> None:
    data = json.dumps(message).encode()
    sock.sendall(struct.pack(">I", len(data)) + data)


def _recv_message(sock: socket.socket) -> dict | None:
    """One length-prefixed JSON message, read exactly (what follows is the channel's: a
    line-by-line read would cost a system call, and a GIL hand-off, per byte)."""
    header = _recv_exact(sock, 4)
    data = header and _recv_exact(sock, struct.unpack(">I", header)[0])
    return json.loads(data) if data else None


class _Stream(io.RawIOBase):
    """One output stream of a pooled channel, fed by the channel's reader thread."""

    def __init__(self, channel: PooledChannel) -> None:
        self._channel = channel
        self._data = bytearray()
        self.eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        with self._channel.ready:
            if not self._channel.ready.wait_for(lambda: self._data or self.eof,
                                                self._channel.timeout):
                raise TimeoutError("no data from the host within the timeout")
            n = min(len(buffer), len(self._data))
            buffer[:n] = self._data[:n]
            del self._data[:n]
            return n


class PooledChannel:
    """What ssh.py uses of a paramiko Channel, over a pool connection."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.ready = threading.Condition()
        self.timeout: float | None = None
        self._out, self._err = _Stream(self), _Stream(self)
        self._status: int | None = None
        self._closed = False
        threading.Thread(target=self._read, daemon=True, name="sshpool-channel").start()

    def _read(self) -> None:
        streams = {b"o": self._out, b"e": self._err}
        try:
            while True:
                header = _recv_exact(self._sock, _HEADER.size)
                if header is None:
                    break
                kind, length = _HEADER.unpack(header)
                data = _recv_exact(self._sock, length) if length else b""
                if data is None:
                    break
                if kind == b"x":
                    with self.ready:
                        self._status = struct.unpack(">i", data)[0]
                    break
                if kind in streams:
                    with self.ready:
                        streams[kind]._data += data
                        self.ready.notify_all()
        except OSError:
            pass
        with self.ready:
            self._closed = True
            self._out.eof = self._err.eof = True
            self.ready.notify_all()

    def settimeout(self, timeout: float | None) -> None:
        self.timeout = timeout

    def sendall(self, data: bytes) -> None:
        self._sock.sendall(data)

    def shutdown_write(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def makefile(self, mode: str = "rb"):
        return io.BufferedReader(self._out)

    def makefile_stderr(self, mode: str = "rb"):
        return io.BufferedReader(self._err)

    @property
    def lost(self) -> bool:
        """Ended without an exit status: the host's connection (or the pool) went away."""
        with self.ready:
            return self._closed and self._status is None

    def exit_status_ready(self) -> bool:
        with self.ready:
            return self._closed

    def recv_exit_status(self) -> int:
        """The exit status; -1 when the channel ended without one (as paramiko's)."""
        with self.ready:
            if not self.ready.wait_for(lambda: self._closed, self.timeout):
                raise TimeoutError("no exit status from the host within the timeout")
            return -1 if self._status is None else self._status

    def close(self) -> None:
        self._sock.close()


class SFTPSocket(socket.socket):
    """The pool connection an SFTPClient speaks over (paramiko's log lines ask its name)."""

    @classmethod
    def adopt(cls, sock: socket.socket) -> SFTPSocket:
        return cls(fileno=sock.detach())

    def get_name(self) -> str:
        return "sshpool-sftp"


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


# -- the pool process --------------------------------------------------------------------------


class _Kept:
    serial = 0

    def __init__(self, conn, keep: float) -> None:
        _Kept.serial += 1
        self.id = _Kept.serial
        self.conn = conn
        self.keep = keep
        self.channels = 0
        self.last_used = time.monotonic()

    @property
    def alive(self) -> bool:
        transport = self.conn.client.get_transport()
        return transport is not None and transport.is_active()


class Pool:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.kept: dict[tuple, list[_Kept]] = {}
        self.key_locks: dict[tuple, threading.Lock] = {}
        self.tofu_lock = threading.Lock()
        self.clients = 0
        self.connects = 0
        self.idle_since = time.monotonic()
        self.stopping = False

    def acquire(self, config, host, *, fresh: bool = False) -> tuple[_Kept, bool]:
        """A connection with room for one more channel (counted); `reused` tells whether it
        was made before this request."""
        from tfsubmit.targets.ssh import Connection

        key = connection_key(config, host)
        with self.lock:
            key_lock = self.key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self.lock:
                entries = self.kept.setdefault(key, [])
                entries[:] = [e for e in entries if e.alive or e.channels]
                for entry in entries if not fresh else ():
                    if entry.alive and entry.channels < MAX_CHANNELS:
                        entry.channels += 1
                        entry.last_used = time.monotonic()
                        entry.keep = max(entry.keep, config.keep_connections)
                        return entry, True
            conn = Connection(config, host, self.tofu_lock, pooled=False)
            conn.connect()  # raises TargetError with the message a direct connect gives
            entry = _Kept(conn, config.keep_connections)
            entry.channels = 1
            with self.lock:
                self.connects += 1
                self.kept.setdefault(key, []).append(entry)
            return entry, False

    def release(self, entry: _Kept) -> None:
        with self.lock:
            entry.channels -= 1
            entry.last_used = time.monotonic()

    def discard(self, entry: _Kept) -> None:
        entry.conn.close()
        with self.lock:
            for entries in self.kept.values():
                if entry in entries:
                    entries.remove(entry)

    def drop(self, address: str, port: int) -> int:
        """Close every connection to address:port (its host is going away)."""
        with self.lock:
            gone = [e for key, es in self.kept.items() if key[:2] == (address, port) for e in es]
        for entry in gone:
            self.discard(entry)
        return len(gone)

    def sweep(self) -> bool:
        """Close connections idle past their keep time; True when the pool may exit."""
        now = time.monotonic()
        with self.lock:
            old = [e for es in self.kept.values() for e in es
                   if e.channels == 0 and (now - e.last_used > e.keep or not e.alive)]
        for entry in old:
            self.discard(entry)
        with self.lock:
            busy = self.clients or any(self.kept.values())
            if busy:
                self.idle_since = now
            return self.stopping or (not busy and now - self.idle_since > 5.0)

    # -- one request ----------------------------------------------------------------------------

    def serve(self, sock: socket.socket) -> None:
        with self.lock:
            self.clients += 1
        try:
            self._serve(sock)
        except Exception:  # noqa: BLE001 (a client gone mid-request ends only its request)
            pass
        finally:
            sock.close()
            with self.lock:
                self.clients -= 1

    def _serve(self, sock: socket.socket) -> None:
        from tfsubmit.targets.settings import SSHHost, SSHTargetConfig

        req = _recv_message(sock)
        if req is None:
            return
        kind = req["kind"]
        if kind == "stats":
            with self.lock:
                kept = [{"id": e.id, "address": key[0], "port": key[1], "user": key[2],
                         "key_file": key[3], "channels": e.channels}
                        for key, es in self.kept.items() for e in es]
            return _answer(sock, ok=True, kept=kept, connects=self.connects, pid=os.getpid())
        if kind == "drop":
            return _answer(sock, ok=True, dropped=self.drop(req["address"], req["port"]))
        if kind == "stop":
            self.stopping = True
            return _answer(sock, ok=True)
        config = SSHTargetConfig.model_validate(req["config"])
        host = SSHHost.model_validate(req["host"])
        try:
            entry, reused = self.acquire(config, host)
        except TargetError as exc:
            return _answer(sock, error=str(exc))
        try:
            if kind == "connect":
                return _answer(sock, ok=True, reused=reused)
            timeout = float(req.get("timeout") or 30)
            try:
                channel = self._open(entry, req, min(timeout, config.connect_timeout)
                                     if reused else timeout)
            except Exception as exc:  # noqa: BLE001 (paramiko's errors are many kinds)
                if not reused:
                    raise
                # A kept connection that refuses one more channel (the host's MaxSessions)
                # stays for the channels it has; one that does not answer is gone.
                stale, entry = entry, None
                self.release(stale)
                if not isinstance(exc, paramiko.ChannelException):
                    self.discard(stale)
                entry, _ = self.acquire(config, host, fresh=True)
                channel = self._open(entry, req, timeout)
            _answer(sock, ok=True)
            if kind == "sftp":
                _splice(sock, channel)
            else:
                _relay(sock, channel)
        except TargetError as exc:
            _answer(sock, error=str(exc))
        except Exception as exc:  # noqa: BLE001 (paramiko's errors are many kinds)
            where = f"{config.user}@{host.address}:{config.port}"
            _answer(sock, error=f"{where}: opening a channel failed: {exc or type(exc).__name__}")
        finally:
            if entry is not None:
                self.release(entry)

    @staticmethod
    def _open(entry: _Kept, req: dict, timeout: float):
        channel = entry.conn.client.get_transport().open_session(timeout=timeout)
        if req["kind"] == "sftp":
            channel.invoke_subsystem("sftp")
        else:
            if req.get("combine"):
                channel.set_combine_stderr(True)
            channel.exec_command(req["command"])
        return channel


def _answer(sock: socket.socket, **fields) -> None:
    try:
        _send_message(sock, fields)
    except OSError:
        pass


def _pump_in(sock: socket.socket, channel) -> None:
    """The client's bytes to the channel; the client's shutdown is the channel's EOF."""
    try:
        while data := sock.recv(65536):
            channel.sendall(data)
        channel.shutdown_write()
    except OSError:
        pass


def _relay(sock: socket.socket, channel) -> None:
    """Frames of stdout, stderr and the exit status to the client; a client gone (a frame
    that cannot be sent, a keep-alive included) closes the channel."""
    send_lock = threading.Lock()
    gone = threading.Event()

    def send(kind: bytes, data: bytes) -> None:
        try:
            with send_lock:
                sock.sendall(_HEADER.pack(kind, len(data)) + data)
        except OSError:
            gone.set()
            channel.close()

    def pump_out(recv, kind: bytes) -> None:
        while not gone.is_set():
            try:
                data = recv(65536)
            except TimeoutError:
                send(b"k", b"")
                continue
            except OSError:
                return
            if not data:
                return
            send(kind, data)

    channel.settimeout(KEEPALIVE_SECONDS)
    threading.Thread(target=_pump_in, args=(sock, channel), daemon=True).start()
    err = threading.Thread(target=pump_out, args=(channel.recv_stderr, b"e"), daemon=True)
    err.start()
    pump_out(channel.recv, b"o")
    err.join()
    # The exit status follows the output's end; none comes when the connection died, and
    # then none is sent (the client takes that for a lost host).
    transport = channel.get_transport()
    while not gone.is_set() and not channel.status_event.wait(1.0) and transport.is_active():
        pass
    if not gone.is_set() and transport.is_active():
        send(b"x", struct.pack(">i", channel.exit_status))
    channel.close()


def _splice(sock: socket.socket, channel) -> None:
    threading.Thread(target=_pump_in, args=(sock, channel), daemon=True).start()
    try:
        while data := channel.recv(65536):
            sock.sendall(data)
    except OSError:
        pass
    channel.close()


def main() -> int:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(address())
    except OSError:
        return 0  # another pool of this user and version is running: it serves
    server.listen(128)
    server.settimeout(1.0)
    pool = Pool()
    uid = os.getuid()
    while not pool.sweep():
        try:
            client, _ = server.accept()
        except TimeoutError:
            continue
        creds = client.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        if struct.unpack("3i", creds)[2] != uid:
            client.close()  # only this user's processes may use its logins
            continue
        threading.Thread(target=pool.serve, args=(client,), daemon=True).start()
    server.close()
    for entries in list(pool.kept.values()):
        for entry in list(entries):
            entry.conn.close()
    return 0


def call(kind: str, **fields) -> dict | None:
    """A request that needs no host ("stats", "drop", "stop"); None when no pool runs."""
    sock = _dial(start=False)
    if sock is None:
        return None
    with sock:
        try:
            _send_message(sock, {"kind": kind, **fields})
            return _recv_message(sock)
        except (OSError, ValueError):
            return None


if __name__ == "__main__":
    sys.exit(main())
