"""The workspace's fork server: Prefect's engine started by fork, not by a new Python.

The workspace's Prefect worker starts each flow run of tfsubmit's deployments with the
deployment's `command`, `python -m tfsubmit.service.flowrun` (see that module). That small
process asks this server, over a Unix socket in the workspace, to fork a child that runs
`python -m prefect.engine`'s main with the command's environment, working directory and
standard streams, so the flow run pays for no Python start and no Prefect import (the
server imported both once). The child tells the command its pid (to forward signals to)
and its exit status. Prefect's engine does everything else, exactly as in a process of its
own.

The server also holds what a submitter hands over for its run and must never be written
down: the job's secret values, and the submitter's environment and working directory.
Each forked child inherits them in memory; the flow takes its run's (`held`).

The server holds no threads when it forks. It is keyed by a hash of tfsubmit's code and
the API it serves: a different code or API does not use it. This module imports neither
Prefect nor the flows: `daemon/runner.py` hands `serve` what to preload and run.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tfsubmit.store.layout import Workspace, read_json, write_json
from tfsubmit.store.package import package_hash as code_hash
from tfsubmit.store.record import QUEUED, RunRecord
from tfsubmit.system.processes import SERVICE_MARKER, pid_alive, stop_recorded

CONNECT_TIMEOUT = 2.0
# A loaded machine may take a while to answer.
REPLY_TIMEOUT = 10.0
SERVER_MODULE = "tfsubmit.daemon.runner"

# What submitters handed over, by run id: {"env", "cwd", "secrets"} (memory only).
_HELD: dict[str, dict[str, Any]] = {}


def held(run_id: str) -> dict[str, Any] | None:
    """What the submitter of `run_id` handed over, in this process (a child of the fork
    server forked after the hand-over); None when nothing was."""
    return _HELD.get(run_id)


# -- the submitter's side ------------------------------------------------------------------------


def hand_over(workspace: Workspace, run_id: str, *, env: dict[str, str], cwd: str,
              secrets: dict[str, str]) -> bool:
    """Give the fork server what run `run_id` needs and no file may hold; False when no
    current fork server took it."""
    reply = _ask(workspace, {"op": "hold", "run_id": run_id, "env": env, "cwd": cwd,
                             "secrets": secrets})
    return bool(reply and reply.get("held"))


def _ask(workspace: Workspace, request: dict[str, Any]) -> dict[str, Any] | None:
    if not is_current(workspace):
        return None
    payload = json.dumps(request).encode() + b"\n"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(CONNECT_TIMEOUT)
            sock.connect(str(workspace.forkserver_socket))
            sock.settimeout(REPLY_TIMEOUT)
            sock.sendall(payload)
            return json.loads(sock.makefile().readline())
    except (OSError, ValueError):
        return None


def connect_engine(socket_path: Path, env: dict[str, str], cwd: str) -> socket.socket:
    """Ask the fork server at `socket_path` for a Prefect engine with this process's
    standard streams; returns the connection on which the child says its pid and, at its
    end, its exit status (OSError when there is no server to ask)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        sock.connect(str(socket_path))
        payload = json.dumps({"op": "engine", "env": env, "cwd": cwd}).encode() + b"\n"
        socket.send_fds(sock, [payload[:1]], [0, 1, 2])
        sock.sendall(payload[1:])
        return sock
    except BaseException:
        sock.close()
        raise


# -- starting and stopping it --------------------------------------------------------------------


def start(workspace: Workspace, api_url: str) -> int:
    """Start a fork server for this workspace and API, detached; returns its pid."""
    workspace.prefect_home.mkdir(parents=True, exist_ok=True, mode=0o700)
    with _private_file(workspace.forkserver_log) as log:
        process = subprocess.Popen(
            [sys.executable, "-m", SERVER_MODULE, "--fork-server", str(workspace.root)],
            env={**os.environ, "PREFECT_API_URL": api_url, SERVICE_MARKER: "fork-server"},
            umask=0o077,  # its socket, and every run's files, are this user's alone
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    # Recorded at once, so a concurrent `ensure` does not start a second one.
    write_json(workspace.forkserver_state,
               {"pid": process.pid, "code": code_hash(), "api_url": api_url})
    return process.pid


def _private_file(path: Path):
    """Open `path` for appending, readable by this user alone."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")


def state(workspace: Workspace) -> dict[str, Any] | None:
    """The running fork server's state (pid, code, API, deployments once registered)."""
    found = read_json(workspace.forkserver_state)
    return found if found and pid_alive(found["pid"]) else None


def is_current(workspace: Workspace, api_url: str | None = None) -> bool:
    """A fork server runs for this workspace with this very code (and `api_url`)."""
    found = state(workspace)
    return bool(found and found.get("code") == code_hash()
                and (api_url is None or found.get("api_url") == api_url))


def ensure(workspace: Workspace, api_url: str) -> None:
    if is_current(workspace, api_url):
        return
    if state(workspace):
        stop(workspace)  # an older tfsubmit's, or another API's: replace it
    start(workspace, api_url)


def stop(workspace: Workspace) -> bool:
    return stop_recorded(workspace.forkserver_state, grace=5)


# -- the server ----------------------------------------------------------------------------------


def serve(workspace: Workspace, engine: Callable[[], int], *,
          ready: dict[str, Any] | None = None) -> None:
    """Answer hand-overs and fork `engine()` for each engine request (the caller has
    imported what it needs, and holds no thread). `ready`: facts added to the state file
    once the socket listens (e.g. the deployments registered)."""
    if threading.active_count() != 1:
        raise RuntimeError("the fork server must hold no thread when it forks: "
                           f"{threading.enumerate()}")
    path = workspace.forkserver_socket
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(128)  # a burst of requests queues here, not in connect timeouts
    listener.settimeout(1.0)
    write_json(workspace.forkserver_state, {"pid": os.getpid(), "code": code_hash(),
                                            "api_url": os.environ.get("PREFECT_API_URL"),
                                            **(ready or {})})
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = os.getpid()
    try:
        while True:
            _reap()
            try:
                conn = listener.accept()[0]
            except (TimeoutError, InterruptedError):
                continue
            _answer(workspace, conn, listener, engine)
    finally:
        if os.getpid() == server:  # not in a forked child on its way out
            listener.close()
            path.unlink(missing_ok=True)


def _answer(workspace: Workspace, conn: socket.socket, listener: socket.socket,
            engine: Callable[[], int]) -> None:
    fds: list[int] = []
    try:
        conn.settimeout(CONNECT_TIMEOUT)
        first, fds, _, _ = socket.recv_fds(conn, 1, 3)
        request = json.loads(first + conn.makefile("rb").readline())
        if request.get("op") == "hold":
            _HELD[request["run_id"]] = {key: request[key] for key in ("env", "cwd", "secrets")}
            conn.sendall(b'{"held": true}\n')
        elif request.get("op") == "engine" and len(fds) == 3:
            _forget_started(workspace)
            _fork_engine(request, conn, fds, listener, engine)
    except (OSError, ValueError, KeyError) as exc:
        print(f"tfsubmit fork server: a request failed: {exc!r}", file=sys.stderr, flush=True)
    finally:
        for fd in fds:
            os.close(fd)
        conn.close()


def _forget_started(workspace: Workspace) -> None:
    """Hand-overs of runs that are no longer Queued were taken (or never will be)."""
    for run_id in list(_HELD):
        try:
            status = RunRecord(workspace.paths_of(run_id)).read().get("status")
        except Exception:  # noqa: BLE001 (a run folder removed or damaged: nothing to keep)
            status = None
        if status != QUEUED:
            _HELD.pop(run_id, None)


def _fork_engine(request: dict, conn: socket.socket, fds: list[int],
                 listener: socket.socket, engine: Callable[[], int]) -> None:
    try:
        pid = os.fork()
    except OSError as exc:  # out of processes or memory: the command says so and exits 1
        conn.sendall(json.dumps({"error": f"the fork server could not fork ({exc})"}).encode()
                     + b"\n")
        return
    if pid:
        return
    code = 1
    try:
        listener.close()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.setsid()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        conn.settimeout(None)
        conn.sendall(json.dumps({"pid": os.getpid()}).encode() + b"\n")
        code = engine()
    except BaseException as exc:  # noqa: BLE001 (the command must hear of any end)
        print(f"tfsubmit fork server child: {exc!r}", file=sys.stderr, flush=True)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        conn.sendall(json.dumps({"exit": code}).encode() + b"\n")
    except (OSError, ValueError):
        pass
    # Out through the server's frames (which leave its socket alone in a child) to Python's
    # own exit, as a process of its own would: Prefect's exit hooks send the last log lines
    # and events.
    raise SystemExit(code)


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
