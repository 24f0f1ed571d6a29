"""A warm process that forks runners, so a submission does not pay Prefect's import again.

Starting a runner from scratch costs a Python start plus `import prefect` (2-3 s here).
The fork server imports the flow once, waits on a Unix socket in the workspace, and forks
one child per submission; the child takes the submitter's environment and working
directory, starts its own session, and runs `tfsubmit.runner.main` as a spawned runner would.
The server holds no threads when it forks (Prefect starts none at import).

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
import time
from pathlib import Path

from tfsubmit.procfs import pid_alive
from tfsubmit.workspace import Workspace, read_json, write_json

CONNECT_TIMEOUT = 2.0


def _socket_path(workspace: Workspace) -> Path:
    return workspace.prefect_home / "forkserver.sock"


def _state_path(workspace: Workspace) -> Path:
    return workspace.prefect_home / "forkserver.json"


def code_hash() -> str:
    from tfsubmit.environment import package_hash

    return package_hash()


def request_runner(workspace: Workspace, run_dir: Path) -> int | None:
    """Ask a running fork server for a runner of `run_dir`; None when there is none to ask."""
    if not is_current(workspace):
        return None
    request = {"run_dir": str(run_dir), "env": dict(os.environ), "cwd": os.getcwd()}
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(CONNECT_TIMEOUT)
            sock.connect(str(_socket_path(workspace)))
            sock.sendall(json.dumps(request).encode() + b"\n")
            reply = sock.makefile().readline()
        return int(json.loads(reply)["pid"])
    except (OSError, ValueError, KeyError):
        return None


def start(workspace: Workspace) -> int:
    """Start a fork server for this workspace, detached; returns its pid."""
    workspace.prefect_home.mkdir(parents=True, exist_ok=True)
    log = (workspace.prefect_home / "forkserver.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "tfsubmit.forkserver", str(workspace.root)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    # Recorded at once, so a concurrent `ensure` does not start a second one.
    write_json(_state_path(workspace), {"pid": process.pid, "code": code_hash()})
    return process.pid


def is_current(workspace: Workspace) -> bool:
    """A fork server runs for this workspace with this very code."""
    state = read_json(_state_path(workspace))
    return bool(state and state.get("code") == code_hash() and pid_alive(state["pid"]))


def ensure(workspace: Workspace) -> None:
    if is_current(workspace):
        return
    state = read_json(_state_path(workspace))
    if state and pid_alive(state["pid"]):
        stop(workspace)  # an older tfsubmit's: replace it
    start(workspace)


def stop(workspace: Workspace) -> bool:
    state = read_json(_state_path(workspace))
    _state_path(workspace).unlink(missing_ok=True)
    if not state or not pid_alive(state["pid"]):
        return False
    os.kill(state["pid"], signal.SIGTERM)
    deadline = time.monotonic() + 5
    while pid_alive(state["pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


def serve(workspace: Workspace) -> None:
    import tfsubmit.flows  # noqa: F401  (the point of this process: import once, fork many)
    from tfsubmit import runner

    path = _socket_path(workspace)
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)
    listener.settimeout(1.0)
    write_json(_state_path(workspace), {"pid": os.getpid(), "code": code_hash()})
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
                    _become_runner(request, runner.main)
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
        log = os.open(run_dir / "runner.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        code = main([str(run_dir)])
    finally:
        _drain_prefect()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # never unwind into the server's loop (it would close its socket)


def _drain_prefect() -> None:
    """Send Prefect's last queued logs and events: os._exit skips the exit hooks that
    would (without this, the last seconds of a run's log lines never reached the API)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=10)
        except Exception as exc:  # noqa: BLE001 (best effort on the way out)
            print(f"tfsubmit: could not flush {worker.__name__}: {exc}", file=sys.stderr)


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


if __name__ == "__main__":
    serve(Workspace(sys.argv[1]))
