"""The SSH connection pool's process (`python -m tfsubmit.targets.sshpoold`): it makes the
connections with `ssh.Connection` (host keys, authentication, the error messages, all as a
direct connection has them), keeps them, and relays each request's channel. What it is
and its protocol: `sshpool.py`, the side runners use.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import threading
import time
from pathlib import Path

import paramiko

from tfsubmit.errors import TargetError
from tfsubmit.targets.settings import SSHHost, SSHTargetConfig
from tfsubmit.targets.ssh import Connection
from tfsubmit.targets.sshpool import HEADER, address, recv_message, send_message

MAX_CHANNELS = 8  # per connection: under sshd's default MaxSessions (10)
KEEPALIVE_SECONDS = 2.0  # a silent channel still sends a frame, to notice a client gone


def connection_key(config: SSHTargetConfig, host: SSHHost) -> tuple:
    """Everything that decides who is trusted and who logs in."""
    return (host.address, config.port, config.user, str(Path(config.key_file).expanduser()),
            str(Path(config.known_hosts).expanduser()), config.trust_on_first_use)


class _Kept:
    serial = 0

    def __init__(self, conn, keep: float) -> None:
        _Kept.serial += 1
        self.id = _Kept.serial
        self.conn = conn
        self.keep = keep
        self.channels = 0
        self.last_used = time.monotonic()
        # The host's resident agents (agentd.py) on this connection, one per command that
        # starts one (a workdir and tfsubmit version): its channel, port, token and pid
        self.agents: dict[str, tuple[paramiko.Channel, int, str, int]] = {}
        self.agent_lock = threading.Lock()
        self.agent_refused: str | None = None  # why this host cannot have one

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
        key = connection_key(config, host)
        with self.lock:
            key_lock = self.key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self.lock:
                entries = self.kept.setdefault(key, [])
                entries[:] = [e for e in entries if e.alive or e.channels]
                for entry in entries if not fresh else ():
                    room = MAX_CHANNELS - len(entry.agents)  # their sessions count
                    if entry.alive and entry.channels < room:
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

    def close_idle(self, addresses: list[str] | None) -> dict:
        """Close the connections (to `addresses`, or all) that no channel uses now, with
        their host agents; the ones in use by a running job stay (they close once idle).
        Taken out of the pool under its lock, so no request gets one of them meanwhile."""
        with self.lock:
            chosen = [(key, e) for key, es in self.kept.items() for e in es
                      if addresses is None or key[0] in addresses]
            closing = [(key, e) for key, e in chosen if e.channels == 0]
            for key, entry in closing:
                self.kept[key].remove(entry)
            busy = [self._describe(key, e) for key, e in chosen if e.channels]
            if not any(self.kept.values()):
                self.stopping = True  # nothing left to keep: the pool exits now
        for _, entry in closing:
            entry.conn.close()
        return {"closed": [self._describe(key, e) for key, e in closing], "busy": busy}

    @staticmethod
    def _describe(key: tuple, entry: _Kept) -> dict:
        idle = time.monotonic() - entry.last_used if entry.channels == 0 else 0.0
        return {"id": entry.id, "address": key[0], "port": key[1], "user": key[2],
                "key_file": key[3], "channels": entry.channels, "keep": entry.keep,
                "idle_s": round(idle, 1), "agents": [a[3] for a in entry.agents.values()],
                "agent_refused": entry.agent_refused}

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
            return not busy and (self.stopping or now - self.idle_since > 5.0)

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
        req = recv_message(sock)
        if req is None:
            return
        kind = req["kind"]
        if kind == "stats":
            with self.lock:
                kept = [self._describe(key, e) for key, es in self.kept.items() for e in es]
            return _answer(sock, ok=True, kept=kept, connects=self.connects, pid=os.getpid())
        if kind == "drop":
            return _answer(sock, ok=True, dropped=self.drop(req["address"], req["port"]))
        if kind == "close":
            return _answer(sock, ok=True, **self.close_idle(req.get("addresses")))
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
            open_channel = self._agent_channel if kind == "agent" else self._open
            try:
                channel = open_channel(entry, req, min(timeout, config.connect_timeout)
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
                channel = open_channel(entry, req, timeout)
            if channel is None:  # the runner runs it in a session of its own
                return _answer(sock, unavailable=entry.agent_refused or "no resident agent")
            channel.settimeout(None)
            _answer(sock, ok=True)
            if kind in ("sftp", "agent"):  # the agent sends frames itself
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

    def _agent_channel(self, entry: _Kept, req: dict, timeout: float):
        """A channel to the host's resident agent (started on first use) that has taken
        the command; None when the host has no agent (refused, or gone). A connection that
        does not answer raises, as `_open` does."""
        agent = self._agent(entry, req["serve"], timeout)
        channel = None
        if agent is not None:
            transport = entry.conn.client.get_transport()
            try:
                channel = transport.open_channel("direct-tcpip", ("127.0.0.1", agent[1]),
                                                 ("127.0.0.1", 0), timeout=timeout)
            except paramiko.ChannelException as exc:
                with entry.agent_lock:
                    if entry.agents.get(req["serve"]) is agent:
                        del entry.agents[req["serve"]]
                    if exc.code == 1:  # administratively prohibited: sshd forwards nothing
                        entry.agent_refused = f"sshd refuses forwarding ({exc.text})"
                agent[0].close()
        if channel is not None:
            channel.settimeout(timeout)
            try:
                channel.sendall((json.dumps({"token": agent[2], "argv": req["argv"],
                                             "env": req.get("env") or {},
                                             "combine": bool(req.get("combine"))})
                                 + "\n").encode())
                taken = _recv_exact(channel, HEADER.size) == HEADER.pack(b"k", 0)
            except (OSError, paramiko.SSHException):
                taken = False
            if not taken:  # the agent is gone (killed, say): the client runs it itself
                channel.close()
                channel = None
                with entry.agent_lock:
                    if entry.agents.get(req["serve"]) is agent:
                        del entry.agents[req["serve"]]
                agent[0].close()
        return channel

    @staticmethod
    def _agent(entry: _Kept, serve: str, timeout: float):
        """The entry's resident agent, started with `serve` if it has none yet."""
        with entry.agent_lock:
            agent = entry.agents.pop(serve, None)
            if agent is not None and not agent[0].exit_status_ready():
                entry.agents[serve] = agent
                return agent
            if entry.agent_refused:
                return None
            channel = entry.conn.client.get_transport().open_session(timeout=timeout)
            channel.settimeout(timeout)
            channel.exec_command(serve)
            try:
                report = json.loads(channel.makefile("rb").readline() or b"{}")
            except (OSError, ValueError):  # no answer: the runner runs the command itself
                channel.close()
                return None
            if "port" not in report:  # the runtime is not installed yet, say: later
                channel.close()
                if report.get("refused"):
                    entry.agent_refused = report["refused"]
                return None
            channel.settimeout(None)
            agent = (channel, int(report["port"]), str(report["token"]), int(report["pid"]))
            if len(entry.agents) >= MAX_CHANNELS // 2:  # the oldest goes (its session ends)
                entry.agents.pop(next(iter(entry.agents)))[0].close()
            entry.agents[serve] = agent
            return agent

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


def _recv_exact(channel, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = channel.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _answer(sock: socket.socket, **fields) -> None:
    try:
        send_message(sock, fields)
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
                sock.sendall(HEADER.pack(kind, len(data)) + data)
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




if __name__ == "__main__":
    sys.exit(main())
