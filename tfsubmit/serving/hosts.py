"""Where an endpoint's supervisor runs and keeps its files (state.json, supervisor.json,
endpoint.log, the version specs): this machine (local and Docker endpoints: the endpoint's
folder, bind-mounted into a container), or an SSH host (its copy under the target's
workdir, reached over the target's connection)."""

from __future__ import annotations

import os
import posixpath
import signal
import subprocess
from pathlib import Path

from tfsubmit.errors import TargetError
from tfsubmit.system.processes import pid_alive
from tfsubmit.targets.ssh import Connection, _sftp_makedirs, shell_join

SUPERVISOR = "tfsubmit.endpoint.supervisor"
SERVER = "tfsubmit.endpoint.server"


class LocalFiles:
    """The endpoint's folder on this machine."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.where = str(folder)

    def read(self, name: str, offset: int = 0) -> bytes | None:
        try:
            with (self.folder / name).open("rb") as handle:
                handle.seek(offset)
                return handle.read()
        except OSError:
            return None

    def write(self, name: str, data: bytes) -> None:
        path = self.folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def remove(self, name: str) -> None:
        (self.folder / name).unlink(missing_ok=True)

    def is_supervisor(self, pid: int, role: str = SUPERVISOR) -> bool:
        """Whether `pid` is this endpoint's supervisor (or server: `role`), not a reused
        pid."""
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        return pid_alive(pid) and role.encode() in argv and str(self.folder).encode() in argv

    def signal(self, pid: int, sig: int, role: str = SUPERVISOR) -> None:
        if self.is_supervisor(pid, role):
            try:
                os.killpg(pid, sig) if role == SERVER else os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def start(self, python: str, env: dict[str, str], base_env: dict[str, str]) -> int:
        with (self.folder / "endpoint.log").open("a") as log:
            popen = subprocess.Popen([python, "-m", SUPERVISOR, str(self.folder)],
                                     env={**base_env, **env}, cwd=str(self.folder),
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                     start_new_session=True)
        return popen.pid

    def put_tree(self, local: Path, name: str) -> str:
        """Where `local` is on this machine already: its own path."""
        return str(local)

    def path(self, name: str) -> str:
        return str(self.folder / name)

    def remove_all(self) -> None:
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)


class SSHFiles:
    """The endpoint's folder on an SSH host."""

    def __init__(self, conn: Connection, folder: str) -> None:
        self.conn = conn
        self.folder = folder
        self.where = f"{conn.name}:{folder}"

    def read(self, name: str, offset: int = 0) -> bytes | None:
        try:
            with self.conn.sftp.open(posixpath.join(self.folder, name), "rb") as handle:
                handle.seek(offset)
                return handle.read()
        except OSError:
            return None

    def write(self, name: str, data: bytes) -> None:
        path = posixpath.join(self.folder, name)
        _sftp_makedirs(self.conn.sftp, posixpath.dirname(path))
        self.conn.put_bytes(data, path)

    def remove(self, name: str) -> None:
        try:
            self.conn.sftp.remove(posixpath.join(self.folder, name))
        except OSError:
            pass

    def is_supervisor(self, pid: int, role: str = SUPERVISOR) -> bool:
        argv = self.read_proc(pid)
        return argv is not None and role.encode() in argv and self.folder.encode() in argv

    def read_proc(self, pid: int) -> bytes | None:
        try:
            return self.conn.run(["cat", f"/proc/{int(pid)}/cmdline"], timeout=30).encode()
        except TargetError:
            return None

    def signal(self, pid: int, sig: int, role: str = SUPERVISOR) -> None:
        if self.is_supervisor(pid, role):
            target = f"-{int(pid)}" if role == SERVER else str(int(pid))  # a server's group
            try:
                self.conn.run(["kill", f"-{signal.Signals(sig).name[3:]}", "--", target],
                              timeout=30)
            except TargetError:
                pass  # gone meanwhile

    def start(self, python: str, env: dict[str, str], base_env: dict[str, str]) -> int:
        """Detached: its own session, its output to endpoint.log, nothing tied to the SSH
        channel (which closes at once)."""
        log = posixpath.join(self.folder, "endpoint.log")
        command = (f"cd {shell_join([self.folder])} && "
                   f"env {shell_join([f'{k}={v}' for k, v in env.items()])} "
                   f"setsid {shell_join([python, '-m', SUPERVISOR, self.folder])} "
                   f">> {shell_join([log])} 2>&1 < /dev/null & echo $!")
        return int(self.conn.run(["sh", "-c", command], timeout=60).strip())

    def put_tree(self, local: Path, name: str) -> str:
        """Copy a file or folder of this machine to `name` under the endpoint's folder."""
        remote = posixpath.join(self.folder, name)
        if local.is_file():
            _sftp_makedirs(self.conn.sftp, posixpath.dirname(remote))
            self.conn.put_bytes(local.read_bytes(), remote)
            return remote
        for path in sorted(local.rglob("*")):
            if path.is_file():
                target = posixpath.join(remote, path.relative_to(local).as_posix())
                _sftp_makedirs(self.conn.sftp, posixpath.dirname(target))
                self.conn.put_bytes(path.read_bytes(), target)
        return remote

    def path(self, name: str) -> str:
        return posixpath.join(self.folder, name)

    def remove_all(self) -> None:
        try:
            self.conn.run(["rm", "-rf", self.folder], timeout=120)
        except TargetError:
            pass
