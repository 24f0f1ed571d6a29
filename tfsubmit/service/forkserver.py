"""Starting a run's runner: forked by a warm fork server, else spawned from scratch.

Starting a runner from scratch costs a Python start plus its imports. The fork server
(`python -m tfsubmit.service.runner --fork-server WORKSPACE`) imports what a runner needs
once (not Prefect), waits on a Unix socket in the workspace, and forks one child per
submission; the child takes the submitter's environment and working directory, starts its
own session, and runs the runner's `main` as a spawned runner would. The server holds no
threads when it forks. This module holds both sides of the socket and imports neither the
runner nor the flows: the runner hands `serve` its `main`.

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
from collections.abc import Callable
from pathlib import Path

from tfsubmit.service.processes import (
    SERVICE_MARKER,
    pid_alive,
    signal_group,
    terminate_then_kill,
)
from tfsubmit.store.layout import SECRETS_ENV, RunPaths, Workspace, read_json, write_json
from tfsubmit.store.package import package_hash as code_hash
from tfsubmit.store.record import RunRecord

CONNECT_TIMEOUT = 2.0
# A loaded machine may take a while to answer; a late answer is no harm (see start_runner).
REPLY_TIMEOUT = 10.0
RUNNER_MODULE = "tfsubmit.service.runner"
LOCK_FD_ARG = "--lock-fd"


def start_runner(workspace: Workspace, paths: RunPaths, lock_fd: int,
                 secrets: dict[str, str] | None = None, *, extra_env: dict[str, str] | None = None
                 ) -> None:
    """Start the runner of run `paths`, detached, handing it the run's runner lock
    (`lock_fd`, held by the caller, who may release it once this returns) and the job's
    secret values (in its environment, never on disk).

    Should the fork server fork a runner after all when it answered too late and one was
    spawned instead, both start, but only the first to claim the Queued run runs it."""
    env = {**os.environ, SECRETS_ENV: json.dumps(secrets)} if secrets else dict(os.environ)
    env.update(extra_env or {})
    if not request_runner(workspace, paths.root, lock_fd, env):
        pid = _spawn_runner(paths, lock_fd, env)
        paths.runner_pid.write_text(str(pid))  # the runner writes its own once it has claimed


def _spawn_runner(paths: RunPaths, lock_fd: int, env: dict[str, str]) -> int:
    """Start a runner from scratch (no warm fork server for this workspace and code)."""
    with _private_file(paths.runner_log) as log:
        process = subprocess.Popen(
            [sys.executable, "-m", RUNNER_MODULE, str(paths.root), LOCK_FD_ARG, str(lock_fd)],
            env=env,
            umask=0o077,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            pass_fds=(lock_fd,),
            start_new_session=True,  # the run outlives this process, like a cloud job
        )
    return process.pid


def request_runner(workspace: Workspace, run_dir: Path, lock_fd: int,
                   env: dict[str, str]) -> bool:
    """Ask a running fork server for a runner of `run_dir`, passing it the run's lock over
    the socket (a file only this user can open); False when there is none to ask or it does
    not answer in time. It answers once it has the request; the runner is forked after
    (and writes its own pid file)."""
    if not is_current(workspace):
        return False
    request = {"run_dir": str(run_dir), "env": env, "cwd": os.getcwd()}
    payload = json.dumps(request).encode() + b"\n"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(CONNECT_TIMEOUT)
            sock.connect(str(workspace.forkserver_socket))
            sock.settimeout(REPLY_TIMEOUT)
            socket.send_fds(sock, [payload[:1]], [lock_fd])  # the lock rides on the first byte
            sock.sendall(payload[1:])
            reply = sock.makefile().readline()
        return bool(json.loads(reply)["taken"])
    except (OSError, ValueError, KeyError):
        return False


def start(workspace: Workspace) -> int:
    """Start a fork server for this workspace, detached; returns its pid."""
    workspace.prefect_home.mkdir(parents=True, exist_ok=True, mode=0o700)
    log = _private_file(workspace.forkserver_log)
    process = subprocess.Popen(
        [sys.executable, "-m", RUNNER_MODULE, "--fork-server", str(workspace.root)],
        env={**os.environ, SERVICE_MARKER: "fork-server"},
        umask=0o077,  # its socket, and every run's files, are this user's alone
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    # Recorded at once, so a concurrent `ensure` does not start a second one.
    write_json(workspace.forkserver_state, {"pid": process.pid, "code": code_hash()})
    return process.pid


def _private_file(path: Path):
    """Open `path` for appending, readable by this user alone."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")


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


def serve(workspace: Workspace, main: Callable[[list[str]], int], *,
          every: tuple[float, Callable[[], object]] | None = None) -> None:
    """Fork `main([run_dir])` for each request (the caller has imported what runners
    need); and, with `every`, call `every[1]` each `every[0]` seconds, in a child of the
    server's own (never in a thread of it: it holds none when it forks; never in its loop: a
    slow call would hold submissions up). The child is in the server's process group, so
    stopping the server stops it."""
    path = workspace.forkserver_socket
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(128)  # a burst of submitters queues here, not in connect timeouts
    listener.settimeout(1.0)
    write_json(workspace.forkserver_state, {"pid": os.getpid(), "code": code_hash()})
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if every is not None:
        _start_ticker(*every)
    taken: list[dict] = []  # answered, their runners not forked yet
    try:
        while True:
            _reap()
            # Whoever is waiting is answered before the next runner is forked: a burst of
            # submissions waits for one answer each (and one fork at most), not for every
            # fork before its own.
            if taken:
                listener.setblocking(False)
            else:
                listener.settimeout(1.0)
            try:
                while True:
                    request = _take(listener.accept()[0])
                    if request is not None:
                        taken.append(request)
                    listener.setblocking(False)  # and whoever else is waiting
            except (BlockingIOError, InterruptedError, TimeoutError):
                pass
            if taken:
                request = taken.pop(0)
                _fork_runner(request, listener, main, others=taken)
    finally:
        listener.close()
        path.unlink(missing_ok=True)


def _take(conn: socket.socket) -> dict | None:
    """Read one request (and the run's lock riding with it) and say it is taken."""
    with conn:
        conn.settimeout(CONNECT_TIMEOUT)
        fds: list[int] = []
        try:
            first, fds, _, _ = socket.recv_fds(conn, 1, 1)
            request = json.loads(first + conn.makefile("rb").readline())
            request["lock_fd"] = fds[0]
        except (OSError, ValueError, IndexError):
            for fd in fds:
                os.close(fd)
            return None
        try:
            conn.sendall(json.dumps({"taken": True}).encode() + b"\n")
        except OSError:
            pass  # the submitter gave up waiting; the runner claims the run anyway
        return request


def _fork_runner(request: dict, listener: socket.socket, main, *, others: list[dict]) -> None:
    """Fork the runner of `request`; it keeps that run's lock and none of `others`' (runs
    answered but not forked yet: a lock held by the wrong runner would keep a dead run
    looking alive)."""
    try:
        pid = os.fork()
    except OSError as exc:  # the machine is out of processes or memory
        RunRecord(RunPaths(Path(request["run_dir"]))).failed(
            f"its runner could not be started: the fork server could not fork ({exc})")
        os.close(request["lock_fd"])
        return
    if pid == 0:
        listener.close()
        for other in others:
            os.close(other["lock_fd"])
        _become_runner(request, main)
    os.close(request["lock_fd"])  # the runner holds it now


def _start_ticker(seconds: float, tick: Callable[[], object]) -> int:
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    code = 0
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        while os.getppid() == parent:
            began = time.monotonic()
            try:
                tick()
            except Exception as exc:  # noqa: BLE001 (a look that failed; the next one may not)
                print(f"tfsubmit fork server: {exc!r}", file=sys.stderr, flush=True)
            time.sleep(max(0.0, seconds - (time.monotonic() - began)))
    finally:
        os._exit(code)


def _become_runner(request: dict, main) -> None:
    """In the forked child: take the submitter's context, then run the flow. Never returns."""
    code = 1
    try:
        os.setsid()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        run_dir = Path(request["run_dir"])
        log = os.open(RunPaths(run_dir).runner_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        code = main([str(run_dir), LOCK_FD_ARG, str(request["lock_fd"])])
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
