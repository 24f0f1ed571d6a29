"""An endpoint's supervisor: holds its port, runs its server process, keeps it alive.

    python -m tfsubmit.endpoint.supervisor ENDPOINT_DIR

ENDPOINT_DIR holds `endpoint.json` ({name, host, port, current, liveness_seconds}) and
`versions/<n>.json`, one spec per deployed version (see server.py). The supervisor binds
the port once and hands the listening socket to each server process it starts
(`server.py --fd`). It
- starts the current version and reports it Healthy once its init() is done;
- restarts a server process that dies, or that stops answering its liveness check three
  times running (Unhealthy meanwhile; backing off up to 30 s between tries);
- on SIGHUP, reads endpoint.json again and, for a new current version, starts it beside
  the old one on the same socket, waits until it is ready, then retires the old one
  (SIGUSR1: it stops taking connections, answers those it took, exits): no request is
  refused during an update; a new
  version that fails to start leaves the old one serving, and says why;
- on SIGTERM, stops its server processes (TERM, 10 s, KILL) and exits.
Its state is `state.json` ({state, version, pid, child, port, restarts, error,
update_error}); every line it and its servers print is in `endpoint.log`.

Standard library only: it runs in the inference environment's Python.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

TICK = 0.1
STOP_GRACE = 10.0
READY_TIMEOUT = 900.0
LIVENESS_FAILURES = 3
MAX_BACKOFF = 30.0
RETIRE_TIMEOUT = 120.0  # a retired version's slowest request


def _write_json(path: Path, value: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, indent=1))
    os.replace(tmp, path)


class Server:
    """One server process of one version."""

    def __init__(self, folder: Path, version: int, sock: socket.socket, log) -> None:
        self.version = version
        spec_file = folder / "versions" / f"{version}.json"
        self.spec = json.loads(spec_file.read_text())
        self.ready_file = folder / "run" / f"ready-{version}-{time.monotonic_ns()}"
        self.ready_file.parent.mkdir(exist_ok=True)
        env = {**os.environ, **self.spec.get("env", {})}
        self.popen = subprocess.Popen(
            [self.spec["python"], "-m", "tfsubmit.endpoint.server", "--fd", str(sock.fileno()),
             "--spec", str(spec_file), "--ready", str(self.ready_file)],
            pass_fds=(sock.fileno(),), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            env=env, cwd=self.spec.get("cwd") or str(folder), start_new_session=True)
        self.started = time.monotonic()
        self.was_ready = False

    @property
    def pid(self) -> int:
        return self.popen.pid

    def ready(self) -> bool:
        if not self.was_ready and self.ready_file.exists():
            self.was_ready = True
            self.ready_file.unlink(missing_ok=True)
        return self.was_ready

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass

    def retire(self) -> None:
        """Ask it to stop taking connections and exit once it answered those it took."""
        self.retiring_since = time.monotonic()
        self.signal(signal.SIGUSR1)

    def stop(self, grace: float = STOP_GRACE) -> None:
        """TERM its group; KILL what is left after `grace`."""
        self.signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        self.signal(signal.SIGKILL)
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


class Supervisor:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.config = json.loads((folder / "endpoint.json").read_text())
        self.log = (folder / "endpoint.log").open("a", buffering=1)
        self.state: dict[str, Any] = {"state": "Transitioning", "version": None,
                                      "pid": os.getpid(), "child": None,
                                      "port": None, "restarts": 0, "error": None,
                                      "update_error": None, "started": time.time()}
        self.current: Server | None = None
        self.pending: Server | None = None
        self.retiring: list[Server] = []
        self.stopping = False
        self.reload = False
        self.failures = 0  # liveness checks failed in a row
        self.next_check = 0.0
        self.restart_at: float | None = None
        self.crashes = 0  # deaths in a row without becoming ready

    def say(self, text: str) -> None:
        self.log.write(f"[supervisor] {time.strftime('%H:%M:%S')} {text}\n")

    def save(self, **changes: Any) -> None:
        # Every server process it holds, for whoever must stop them if it cannot.
        changes["children"] = [server.pid for server in
                               (self.current, self.pending, *self.retiring) if server]
        self.state.update(changes, updated=time.time())
        _write_json(self.folder / "state.json", self.state)

    def bind(self) -> socket.socket | None:
        host, port = self.config.get("host", "127.0.0.1"), int(self.config.get("port") or 0)
        try:
            sock = socket.create_server((host, port), backlog=1024)
        except OSError as exc:
            reason = f"port {port} on {host} is in use" if exc.errno == 98 else str(exc)
            self.say(f"cannot listen: {reason}")
            self.save(state="Failed", error=f"{reason}: choose another port")
            return None
        sock.set_inheritable(True)
        self.save(port=sock.getsockname()[1])
        self.say(f"listening on {host}:{sock.getsockname()[1]}")
        return sock

    def run(self) -> int:
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stopping", True))
        signal.signal(signal.SIGINT, lambda *_: setattr(self, "stopping", True))
        signal.signal(signal.SIGHUP, lambda *_: setattr(self, "reload", True))
        _write_json(self.folder / "supervisor.json", {"pid": os.getpid()})
        sock = self.bind()
        if sock is None:
            return 2
        self.sock = sock
        version = int(self.config["current"])
        self.current = self.start(version)
        try:
            while not self.stopping:
                time.sleep(TICK)
                if self.reload:
                    self.reload = False
                    self.config = json.loads((self.folder / "endpoint.json").read_text())
                    wanted = int(self.config["current"])
                    if wanted != self.state["version"] and self.pending is None:
                        self.say(f"update: starting version {wanted} beside "
                                 f"version {self.state['version']}")
                        self.pending = self.start(wanted)
                        self.save(update_error=None)
                if self.pending is not None:
                    self.watch_pending()
                for old in list(self.retiring):
                    if not old.alive():
                        self.retiring.remove(old)
                        self.say(f"version {old.version} retired")
                    elif time.monotonic() - old.retiring_since > RETIRE_TIMEOUT:
                        self.retiring.remove(old)
                        old.stop()
                if self.tick_current() == "failed":
                    return 3
        finally:
            self.shutdown()
        return 0

    def start(self, version: int) -> Server:
        server = Server(self.folder, version, self.sock, self.log)
        self.say(f"started version {version} (pid {server.pid})")
        # Noted at once, before the caller holds it (save() lists the servers it holds).
        self.state["children"] = [*self.state.get("children", []), server.pid]
        _write_json(self.folder / "state.json", self.state)
        return server

    def watch_pending(self) -> None:
        pending = self.pending
        if pending.ready():
            old, self.current, self.pending = self.current, pending, None
            old.retire()
            self.retiring.append(old)
            self.save(state="Healthy", version=pending.version, child=pending.pid, error=None)
            self.say(f"version {pending.version} is serving; retiring version {old.version} "
                     "(it answers what it took, then exits)")
            self.failures = self.crashes = 0
        elif not pending.alive() or time.monotonic() - pending.started > READY_TIMEOUT:
            pending.stop(grace=1)
            error = (f"version {pending.version} did not start (exit code "
                     f"{pending.popen.returncode}; see the log); version "
                     f"{self.state['version']} serves on")
            self.say(error)
            self.pending = None
            self.save(update_error=error)

    def tick_current(self) -> str | None:
        server = self.current
        now = time.monotonic()
        if self.restart_at is not None:
            if now >= self.restart_at:
                self.restart_at = None
                self.current = self.start(server.version)
            return None
        if server.alive():
            if not server.ready():
                if now - server.started > READY_TIMEOUT:
                    self.say(f"version {server.version} not ready after {READY_TIMEOUT:g} s")
                    server.stop(grace=1)
                return None
            if self.state["state"] != "Healthy" or self.state["child"] != server.pid:
                self.crashes = 0
                self.save(state="Healthy", version=server.version, child=server.pid,
                          error=None)
                self.say(f"version {server.version} is Healthy")
            if now >= self.next_check:
                self.next_check = now + float(self.config.get("liveness_seconds", 5))
                self.check_liveness(server)
            return None
        code = server.popen.returncode
        if not server.was_ready and self.state["version"] is None:
            # The first start failed (init raised, a bad model): the deployment failed.
            self.save(state="Failed", error=f"the server exited with code {code} before "
                      "it was ready (init() or loading the model failed); see the log")
            self.say(f"version {server.version} failed to start (exit code {code})")
            return "failed"
        self.crashes += 0 if server.was_ready else 1
        delay = min(MAX_BACKOFF, 2.0 ** self.crashes - 1)
        self.state["restarts"] += 1
        self.save(state="Unhealthy", child=None,
                  error=f"the server process exited with code {code}; restarting")
        self.say(f"version {server.version}'s server exited with code {code}; restarting "
                 f"in {delay:.0f} s")
        self.restart_at = now + delay
        return None

    def check_liveness(self, server: Server) -> None:
        port = self.state["port"]
        host = self.config.get("host", "127.0.0.1")
        host = "127.0.0.1" if host in ("", "0.0.0.0") else host
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/", timeout=10) as reply:
                ok = reply.status == 200
        except OSError:
            ok = False
        self.failures = 0 if ok else self.failures + 1
        if self.failures >= LIVENESS_FAILURES:
            self.say(f"version {server.version} failed {self.failures} liveness checks in a "
                     "row: killing it")
            self.failures = 0
            server.signal(signal.SIGKILL)

    def shutdown(self) -> None:
        self.say("stopping")
        for server in (self.pending, self.current, *self.retiring):
            if server is not None:
                server.stop()
        self.save(state="Deleted", child=None)
        self.say("stopped")


def main() -> int:
    folder = Path(sys.argv[1]).resolve()
    return Supervisor(folder).run()


if __name__ == "__main__":
    sys.exit(main())
