"""A real PostgreSQL server for the tests (Debian's `postgresql`), in a temporary folder,
started as the `postgres` user (it refuses root) and stopped by its PID."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
    return found[-1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Postgres:
    def __init__(self) -> None:
        # Not under pytest's 0700 folders: the postgres user must reach its data folder.
        self.root = Path(tempfile.mkdtemp(prefix="tfsubmit-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/tfsubmit"

    def _as_postgres(self, *argv: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(["runuser", "-u", "postgres", "--", *argv], check=True,
                              capture_output=True, text=True, timeout=120, **kwargs)

    def start(self) -> Postgres:
        self.root.chmod(0o755)
        shutil.chown(self.root, "postgres", "postgres")
        self._as_postgres(_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U",
                          "postgres", "--no-sync")
        self.process = subprocess.Popen(
            ["runuser", "-u", "postgres", "--", _bin("postgres"), "-D", str(self.data),
             "-h", "127.0.0.1", "-p", str(self.port), "-k", str(self.root),
             "-c", "max_connections=300", "-c", "fsync=off"],
            stdout=subprocess.DEVNULL, stderr=(self.root / "log").open("w"),
            start_new_session=True)
        deadline = time.monotonic() + 60
        while subprocess.run([_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                             capture_output=True).returncode != 0:
            assert self.process.poll() is None, (self.root / "log").read_text()
            assert time.monotonic() < deadline, "PostgreSQL did not start"
            time.sleep(0.2)
        self._as_postgres(_bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                          "tfsubmit")
        return self

    def query(self, sql: str) -> str:
        return self._as_postgres(_bin("psql"), "-h", "127.0.0.1", "-p", str(self.port),
                                 "-d", "tfsubmit", "-tAc", sql).stdout.strip()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)  # PostgreSQL's fast shutdown
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)
