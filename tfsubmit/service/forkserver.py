"""Starting a run's runner: forked by a warm fork server, else spawned from scratch.

Starting a runner from scratch costs a Python start plus `import prefect` (2-3 s here).
The fork server (`python -m tfsubmit.service.runner --fork-server WORKSPACE`) imports the
flows once, waits on a Unix socket in the workspace, and forks one child per submission;
the child takes the submitter's environment and working directory, starts its own session,
and runs the runner's `main` as a spawned runner would. The server holds no threads when it
forks (Prefect starts none at import). This module holds both sides of the socket and
imports neither the runner nor the flows: the runner hands `serve` its `main`.

It is keyed by a hash of tfsubmit's code: a submitter whose code differs (an upgrade, an
edit) does not use it and spawns a runner instead. Without a fork server, submission
works the same, only slower to start.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tfsubmit.service.processes import pid_alive, signal_group, terminate_then_kill
from tfsubmit.store.layout import RunPaths, Workspace, read_json, write_json
from tfsubmit.store.package import package_hash as code_hash

CONNECT_TIMEOUT = 2.0
RUNNER_MODULE = "tfsubmit.service.runner"


def start_runner(workspace: Workspace, paths: RunPaths) -> int:
    """Start the runner of run `paths`, detached; records and returns its pid."""
    pid = request_runner(workspace, paths.root) or _spawn_runner(paths)
    paths.runner_pid.write_text(str(pid))
    return pid


def _spawn_runner(paths: RunPaths) -> int:
    """Start a runner from scratch (no warm fork server for this workspace and code)."""
    with paths.runner_log.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", RUNNER_MODULE, str(paths.root)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the run outlives this process, like a cloud job
        )
    return process.pid


def request_runner(workspace: Workspace, run_dir: Path) -> int | None:
    """Ask a running fork server for a runner of `run_dir`; None when there is none to ask."""
    if not is_current(workspace):
        return None
    request = {"run_dir": str(run_dir), "env": dict(os.environ), "cwd": os.getcwd()}
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(CONNECT_TIMEOUT)
            sock.connect(str(workspace.forkserver_socket))
            sock.sendall(json.dumps(request).encode() + b"\n")
            reply = sock.makefile().readline()
        return int(json.loads(reply)["pid"])
    except (OSError, ValueError, KeyError):
        return None


def start(workspace: Workspace) -> int:
    """Start a fork server for this workspace, detached; returns its pid."""
    workspace.prefect_home.mkdir(parents=True, exist_ok=True)
    log = workspace.forkserver_log.open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", RUNNER_MODULE, "--fork-server", str(workspace.root)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    # Recorded at once, so a concurrent `ensure` does not start a second one.
    write_json(workspace.forkserver_state, {"pid": process.pid, "code": code_hash()})
    return process.pid


def is_current(workspace: Workspace) -> bool:
    """A fork server runs for this workspace with this very code."""
    state = read_json(workspace.forkserver_state)
    return bool(state and state.get("code") == code_hash() and pid_alive(state["pid"]))


def ensure(workspace: Workspace) -> None:
    if is_current(workspace):
        return
    state = read_json(workspace.forkserver_state)
    if state and pid_alive(state["pid"]):
        stop(workspace)  # an older tfsubmit's: replace it
    start(workspace)


def stop(workspace: Workspace) -> bool:
    state = read_json(workspace.forkserver_state)
    workspace.forkserver_state.unlink(missing_ok=True)
    if not state or not pid_alive(state["pid"]):
        return False
    pid = state["pid"]
    terminate_then_kill(lambda sig: signal_group(pid, sig), lambda: pid_alive(pid), grace=5)
    return True


def serve(workspace: Workspace, main: Callable[[list[str]], int]) -> None:
    """Fork `main([run_dir])` for each request (the caller has imported the flows)."""
    path = workspace.forkserver_socket
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)
    listener.settimeout(1.0)
    write_json(workspace.forkserver_state, {"pid": os.getpid(), "code": code_hash()})
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            _reap()
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(CONNECT_TIMEOUT)
                try:
                    request = json.loads(conn.makefile().readline())
                except (OSError, ValueError):
                    continue
                pid = os.fork()
                if pid == 0:
                    listener.close()
                    conn.close()
                    _become_runner(request, main)
                conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
    finally:
        listener.close()
        path.unlink(missing_ok=True)


def _become_runner(request: dict, main) -> None:
    """In the forked child: take the submitter's context, then run the flow. Never returns."""
    code = 1
    try:
        os.setsid()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        run_dir = Path(request["run_dir"])
        log = os.open(RunPaths(run_dir).runner_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        code = main([str(run_dir)])
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # never unwind into the server's loop (it would close its socket)


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
