"""A real `dockerd` for the tests, started and stopped (by PID) here.

Its own socket, exec root and pidfile under a temporary folder; `--iptables=false`,
`--ip-forward=false`, no default bridge (runs make their own networks). Its data root is
kept in `~/.cache/tfsubmit/dockerd` (TFSUBMIT_TEST_DOCKER_ROOT) so the base image and job
images are built once per machine and found by tag afterwards; an empty one works too (the
first docker test then bootstraps the base image, a couple of minutes).

    python tests/dockerd.py start DIR     # by hand: prints DOCKER_HOST, keeps running
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path


def data_root() -> Path:
    return Path(os.environ.get("TFSUBMIT_TEST_DOCKER_ROOT",
                               "~/.cache/tfsubmit/dockerd")).expanduser()


class Dockerd:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.socket = folder / "docker.sock"
        self.pidfile = folder / "docker.pid"
        self.base_url = f"unix://{self.socket}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> Dockerd:
        dockerd = shutil.which("dockerd")
        if not dockerd:
            raise RuntimeError("dockerd is missing: apt-get install docker.io "
                               "(scripts/test.sh does)")
        data_root().mkdir(parents=True, exist_ok=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        log = (self.folder / "dockerd.log").open("wb")
        self.process = subprocess.Popen(
            [dockerd, "--data-root", str(data_root()), "--exec-root", str(self.folder / "exec"),
             "-H", self.base_url, "--pidfile", str(self.pidfile), "--iptables=false",
             "--ip-forward=false", "--bridge=none"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        import docker

        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError("dockerd exited: "
                                   + (self.folder / "dockerd.log").read_text()[-2000:])
            try:
                docker.DockerClient(base_url=self.base_url, timeout=5).ping()
                return self
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        # The daemon leaves its network namespaces mounted under the exec root.
        for mount in (self.folder / "exec" / "netns").glob("*"):
            subprocess.run(["umount", str(mount)], capture_output=True)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "start":
        sys.exit(__doc__)
    daemon = Dockerd(Path(sys.argv[2]).resolve()).start()
    print(f"DOCKER_HOST={daemon.base_url} (pid {daemon.process.pid}); Ctrl-C stops it")
    try:
        daemon.process.wait()
    except KeyboardInterrupt:
        daemon.stop()
