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
  host rather than put more than 8 channels on one.
- A kept connection that fails to open a channel is closed and one fresh connection is tried,
  so a host that went away costs at most `connect_timeout` more than it did before.
- A run that cannot reach the pool (it could not start, say) connects directly as before.

This module is the side runners use; the pool process is `sshpoold.py`. Protocol, one Unix
connection per request: a JSON message (4 bytes of length, then the JSON) {"kind",
"config", "host", ...}; the answer is one ({"ok": true} or {"error": "..."}); then, for
"exec", the client's bytes are the command's stdin (shutdown = EOF) and the pool's are
frames (1 byte kind, 4 bytes length, data): o stdout, e stderr, k keep-alive, x exit
status; for "sftp" the bytes are the SFTP subsystem's, both ways, unframed.
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

from tfsubmit.errors import TargetError
from tfsubmit.store.package import package_hash
from tfsubmit.system.processes import KEEPER_MARKER, RUN_MARKER, SERVICE_MARKER

START_SECONDS = 10.0
HEADER = struct.Struct(">cI")  # a frame: its kind, its length


def address() -> str:
    return f"\0tfsubmit-sshpool-{os.getuid()}-{package_hash()}"


# -- the client side (in each runner) -------------------------------------------------------------


def request(config, host, kind: str, *, start: bool = True, **fields) -> socket.socket | None:
    """Send one request; returns the socket once the pool said ok, None when there is no
    pool (and `start` is false, or it could not be started); raises TargetError with the
    pool's error (a connection it could not make, with `ssh.Connection`'s message)."""
    sock = _dial(start)
    if sock is None:
        return None
    try:
        # The target's settings with this one host: a request's size and the pool's work
        # on it do not grow with the number of hosts (16 hosts: 16 x 3 requests)
        one = host.model_dump()
        send_message(sock, {"kind": kind, "config": {**config.model_dump(exclude={"hosts"}),
                                                     "hosts": [one]},
                             "host": one, **fields})
        answer = recv_message(sock) or {}
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
    subprocess.Popen([sys.executable, "-m", "tfsubmit.targets.sshpoold"], env=env,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)


def send_message(sock: socket.socket, message: dict) -> None:
    data = json.dumps(message).encode()
    sock.sendall(struct.pack(">I", len(data)) + data)


def recv_message(sock: socket.socket) -> dict | None:
    """One length-prefixed JSON message, read exactly (what follows is the channel's: a
    line-by-line read would cost a system call, and a GIL hand-off, per byte)."""
    header = recv_exact(sock, 4)
    data = header and recv_exact(sock, struct.unpack(">I", header)[0])
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
                header = recv_exact(self._sock, HEADER.size)
                if header is None:
                    break
                kind, length = HEADER.unpack(header)
                data = recv_exact(self._sock, length) if length else b""
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


def recv_exact(sock: socket.socket, n: int) -> bytes | None:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def call(kind: str, **fields) -> dict | None:
    """A request that needs no host ("stats"; "drop" ADDRESS PORT, every connection to it;
    "close" [ADDRESSES], the idle ones, `tfsubmit connections close`); None when no pool
    runs."""
    sock = _dial(start=False)
    if sock is None:
        return None
    with sock:
        try:
            send_message(sock, {"kind": kind, **fields})
            return recv_message(sock)
        except (OSError, ValueError):
            return None

