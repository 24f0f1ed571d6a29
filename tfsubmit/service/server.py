"""The embedded Prefect server: started on demand, reused, kept under the workspace.

If `PREFECT_API_URL` is set, tfsubmit uses that API and starts nothing. Otherwise the first
submission starts `prefect server start` on 127.0.0.1 with its SQLite database in
`<workspace>/prefect/`, and later submissions reuse it (no ~10 s ephemeral server per run).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tfsubmit.errors import ServerError
from tfsubmit.service import forkserver
from tfsubmit.store.layout import Workspace, read_json, write_json
from tfsubmit.system.processes import SERVICE_MARKER, pid_alive, stop_recorded

START_TIMEOUT = 90.0


@dataclass(frozen=True)
class ServerInfo:
    pid: int | None
    port: int | None
    api_url: str
    running: bool
    embedded: bool

    @property
    def ui_url(self) -> str:
        return self.api_url.removesuffix("/api")


# Client retries of a busy server's 503 (SQLite locked) and of a lost connection: back-off
# 2, 4, 8 s. The run's outcome never waits on them (see flows/submit.py).
CLIENT_RETRIES = "3"
# The worker's: it must not drop a flow run it could not hand its process to because the
# server was busy a minute (back-off 2 to 64 s); no run waits on it once started.
WORKER_CLIENT_RETRIES = "6"


def prefect_env(workspace: Workspace) -> dict[str, str]:
    """Settings every Prefect process of this workspace shares."""
    return {
        "PREFECT_HOME": str(workspace.prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_CLI_PROMPT": "false",
        "PREFECT_CLIENT_MAX_RETRIES": CLIENT_RETRIES,
    }


def database_url(workspace: Workspace) -> str | None:
    """The embedded server's database when it is not its own SQLite file."""
    try:
        return workspace.server_database.read_text().strip() or None
    except FileNotFoundError:
        return None


def _set_database(workspace: Workspace, url: str | None) -> None:
    if url is None:
        workspace.server_database.unlink(missing_ok=True)
        return
    if not url.startswith(("postgresql://", "postgresql+asyncpg://")):
        raise ServerError(f"--database {url!r}: give a PostgreSQL URL, "
                          "postgresql://USER:PASSWORD@HOST:PORT/DATABASE")
    fd = os.open(workspace.server_database, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:  # it may hold a password: this user's alone
        out.write(url)


def healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def server_status(workspace: Workspace) -> ServerInfo:
    external = os.environ.get("PREFECT_API_URL")
    if external:
        return ServerInfo(None, None, external.rstrip("/"), healthy(external), embedded=False)
    state = read_json(workspace.server_state)
    if not state:
        return ServerInfo(None, None, "", False, embedded=True)
    running = pid_alive(state["pid"]) and healthy(state["api_url"])
    return ServerInfo(state["pid"], state["port"], state["api_url"], running, embedded=True)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now (the embedded server's, an endpoint's, TensorBoard's)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _prefect_cli() -> list[str]:
    script = Path(sys.executable).with_name("prefect")
    return [str(script)] if script.exists() else [sys.executable, "-m", "prefect"]


def ensure_server(workspace: Workspace, *, port: int | None = None,
                  database: str | None = None,
                  say: Callable[[str], None] = lambda text: None) -> ServerInfo:
    """The API to use, and the workspace's flow service on it: PREFECT_API_URL, or the
    embedded server, started if needed (on `database`, a PostgreSQL URL, when given: kept
    for later starts too); then the fork server (which registers the workspace's
    deployments) and the worker that runs their flow runs. `say` hears a line when a start
    begins and when the server is ready, with its time."""
    info = server_status(workspace)
    if database is not None and database != database_url(workspace) and info.running:
        raise ServerError("the embedded server is running on another database; stop it "
                          "first (`tfsubmit server stop`)")
    if info.running and forkserver.is_current(workspace, info.api_url) \
            and worker_running(workspace, info.api_url):
        return info
    if not info.embedded and not info.running:
        raise ServerError(
            f"PREFECT_API_URL={info.api_url} does not answer; start that server or unset "
            "PREFECT_API_URL to use tfsubmit's embedded one"
        )
    workspace.prefect_home.mkdir(parents=True, exist_ok=True, mode=0o700)
    with workspace.server_lock.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one starter; the others find it running
        if database is not None:
            _set_database(workspace, database)
        info = server_status(workspace)
        if info.embedded and not info.running:
            began = time.monotonic()
            say(f"starting the embedded Prefect server of workspace {workspace.root} "
                "(first use, or it was stopped); this takes 10-40 s, once")
            # The fork server starts with the server: it imports Prefect and the flows
            # while the server boots, and registers the deployments once it answers. The
            # worker does not: started before the API answers, Prefect's worker backs its
            # polls off (up to a minute) and took 24 s more to pick up the first run.
            info = _await_started(workspace) or _start(
                workspace, port or _saved_port(workspace) or free_port(),
                meanwhile=lambda api_url: forkserver.ensure(workspace, api_url))
            say(f"Prefect server ready in {time.monotonic() - began:.1f} s: UI {info.ui_url}")
        forkserver.ensure(workspace, info.api_url)
        _ensure_worker(workspace, info.api_url)
        return info


def pool_name(workspace: Workspace) -> str:
    """The workspace's work pool, and the name of its deployments (one workspace's runs
    never go to another's worker, even on a shared Prefect server)."""
    return "tfsubmit-" + hashlib.sha256(str(workspace.root).encode()).hexdigest()[:8]


def deployment_name(workspace: Workspace, flow: str = "submit-training") -> str:
    """What `prefect deployment run` takes for the workspace's deployment of `flow`."""
    return f"{flow}/{pool_name(workspace)}"


def deployment_ids(workspace: Workspace, timeout: float = START_TIMEOUT) -> dict[str, str]:
    """The ids of the workspace's deployments by flow name, once its fork server has
    registered them (ServerError when it does not within `timeout`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = forkserver.state(workspace)
        if found is None:
            break
        if found.get("deployments"):
            return found["deployments"]
        time.sleep(0.1)
    raise ServerError(f"the workspace's flow service did not register its deployments; see "
                      f"{workspace.forkserver_log}")


def concurrency_limit() -> int:
    """How many flow runs the workspace's worker runs at once: TFSUBMIT_CONCURRENCY, else
    sized to the machine (two per core, at least four)."""
    raw = os.environ.get("TFSUBMIT_CONCURRENCY", "")
    try:
        limit = int(raw) if raw else max(4, 2 * (os.cpu_count() or 1))
    except ValueError:
        raise ServerError(f"TFSUBMIT_CONCURRENCY={raw!r}: give a whole number of runs, "
                          "e.g. 8") from None
    if limit < 1:
        raise ServerError(f"TFSUBMIT_CONCURRENCY={raw!r}: give 1 or more")
    return limit


# Seconds between the worker's looks for flow runs to start (Prefect's default is 10).
WORKER_POLL_SECONDS = "1"


def worker_running(workspace: Workspace, api_url: str) -> bool:
    found = read_json(workspace.worker_state)
    return bool(found and found.get("api_url") == api_url and pid_alive(found["pid"]))


def _ensure_worker(workspace: Workspace, api_url: str) -> None:
    if worker_running(workspace, api_url):
        return
    stop_worker(workspace)
    env = {**os.environ, **prefect_env(workspace), "PREFECT_API_URL": api_url,
           "PREFECT_WORKER_QUERY_SECONDS": WORKER_POLL_SECONDS,
           "PREFECT_CLIENT_MAX_RETRIES": WORKER_CLIENT_RETRIES,
           SERVICE_MARKER: "prefect-worker"}
    with workspace.worker_log.open("ab") as log:
        process = subprocess.Popen(
            [*_prefect_cli(), "worker", "start", "--pool", pool_name(workspace),
             "--type", "process", "--limit", str(concurrency_limit()),
             "--name", f"{pool_name(workspace)}-worker"],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            umask=0o077, start_new_session=True)
    write_json(workspace.worker_state, {"pid": process.pid, "api_url": api_url})


def stop_worker(workspace: Workspace) -> bool:
    # The worker's flow runs are sessions of their own: they go on.
    return stop_recorded(workspace.worker_state, grace=10)


def _saved_port(workspace: Workspace) -> int | None:
    """The port the embedded server had last time: kept, so UI links and bookmarks stay
    good across restarts (unless another program took it meanwhile)."""
    try:
        port = int(workspace.server_port.read_text())
    except (OSError, ValueError):
        return None
    with socket.socket() as sock:
        # As the server binds it (uvicorn sets SO_REUSEADDR): a port whose last server was
        # killed a moment ago still has connections in TIME_WAIT, and is free all the same.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return None
    return port


def _await_started(workspace: Workspace) -> ServerInfo | None:
    """A server whose process lives but does not answer yet (booting, or slow on a busy
    machine) is waited for, never replaced by a second one; None when there is none."""
    state = read_json(workspace.server_state)
    if not state or not pid_alive(state["pid"]):
        return None
    deadline = time.monotonic() + START_TIMEOUT
    while pid_alive(state["pid"]) and time.monotonic() < deadline:
        if healthy(state["api_url"], timeout=5.0):
            return ServerInfo(state["pid"], state["port"], state["api_url"], True, True)
        time.sleep(0.25)
    if pid_alive(state["pid"]):
        raise ServerError(f"the embedded Prefect server (pid {state['pid']}) runs but has not "
                          f"answered for {START_TIMEOUT:.0f} s; see {workspace.server_log}")
    return None


# The embedded server's settings, tuned for many runs at once (see README, "Prefect,
# embedded"): the late-runs service marks each flow run still waiting for a worker slot 15 s
# after it was created "Late", in transactions that fail with SQLite "database is locked" and
# are retried by the hundred under load; runs waiting for a slot stay Scheduled instead.
SERVER_SETTINGS = {"PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false"}


def _start(workspace: Workspace, port: int,
           meanwhile: Callable[[str], None] = lambda api_url: None) -> ServerInfo:
    """Start the server on `port` and wait until it answers; `meanwhile(api_url)` is
    called once its process is started."""
    api_url = f"http://127.0.0.1:{port}/api"
    env = {
        **SERVER_SETTINGS,
        **os.environ,  # the user's own settings win
        **prefect_env(workspace),
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_UI_API_URL": api_url,
    }
    env.pop("PREFECT_API_URL", None)
    env[SERVICE_MARKER] = "prefect-server"  # not a job's: leftover checks pass it by
    database = database_url(workspace)
    if database:
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database.replace(
            "postgresql://", "postgresql+asyncpg://", 1)
    log_path = workspace.server_log
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [*_prefect_cli(), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            umask=0o077,  # its database holds the runs' parameters: this user's alone
            start_new_session=True,  # outlives the submitting process, on purpose
        )
    write_json(workspace.server_state, {"pid": process.pid, "port": port, "api_url": api_url})
    workspace.server_port.write_text(str(port))
    meanwhile(api_url)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            stop_server(workspace)  # the fork server and worker started meanwhile
            raise ServerError(
                f"the embedded Prefect server exited with code {process.returncode}; "
                f"see {log_path}"
            )
        if healthy(api_url, timeout=1.0):
            return ServerInfo(process.pid, port, api_url, True, embedded=True)
        time.sleep(0.25)
    stop_server(workspace)
    raise ServerError(f"the embedded Prefect server did not answer in {START_TIMEOUT:.0f} s; "
                      f"see {log_path}")


def stop_server(workspace: Workspace, *, timeout: float = 15.0) -> bool:
    """Stop the workspace's worker, fork server and embedded server; returns False when no
    server was running. Flow runs already started go on (they are sessions of their own)."""
    stop_worker(workspace)
    forkserver.stop(workspace)
    return stop_recorded(workspace.server_state, grace=timeout)


def api_url(workspace: Workspace | str | Path | None = None, *, start: bool = True) -> str | None:
    """PREFECT_API_URL, else the workspace's embedded server (started when `start`)."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"].rstrip("/")
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    info = ensure_server(ws) if start else server_status(ws)
    return info.api_url if info.running else None
