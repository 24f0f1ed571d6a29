"""Shared fixtures: a workspace served by a real, embedded Prefect server.

Job environments live in the shared cache (TFSUBMIT_ENV_CACHE, default
~/.cache/tfsubmit/envs): the first end-to-end test builds TensorFlow's, the rest reuse it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tfsubmit.service.server import ensure_server, stop_server
from tfsubmit.store.layout import Workspace

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "keras-synthetic"
JOBS = Path(__file__).resolve().parent / "jobs"
TFSUBMIT = [sys.executable, "-m", "tfsubmit.cli"]


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Workspace:
    """A fresh workspace with its embedded Prefect server running; stopped (by PID) at the end."""
    root = tmp_path_factory.mktemp("workspace")
    os.environ.pop("PREFECT_API_URL", None)
    os.environ["TFSUBMIT_WORKSPACE"] = str(root)
    ws = Workspace(root)
    info = ensure_server(ws)
    assert info.running
    # Runs fork from the fork server once it listens, as most users' runs do.
    deadline = time.monotonic() + 60
    while not (ws.prefect_home / "forkserver.sock").exists():
        assert time.monotonic() < deadline, "the fork server did not start"
        time.sleep(0.1)
    yield ws
    stop_server(ws)


@pytest.fixture(scope="session")
def prefect_api(workspace):
    """Call the real Prefect REST API of the workspace's server."""
    from tfsubmit.service.server import server_status

    base = server_status(workspace).api_url

    def call(path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{base}{path}", data=data, headers={"Content-Type": "application/json"},
            method="GET" if body is None else "POST",
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    return call


@pytest.fixture(scope="session")
def hosts(tmp_path_factory):
    """Two real sshd test hosts on 127.0.0.2 and 127.0.0.3, stopped (by PID) at the end."""
    from sshhosts import loopback_hosts

    test_hosts = loopback_hosts(tmp_path_factory.mktemp("sshhosts"), 2).start()
    yield test_hosts
    test_hosts.stop()


@pytest.fixture(scope="session")
def docker_engine(workspace, tmp_path_factory):
    """A real dockerd (see tests/dockerd.py) and the `docker-test` target on it."""
    import docker
    from dockerd import Dockerd

    from tfsubmit.targets.config import DockerTargetConfig, save_target

    daemon = Dockerd(tmp_path_factory.mktemp("dockerd")).start()
    save_target(workspace.root, "docker-test", DockerTargetConfig(base_url=daemon.base_url))
    client = docker.DockerClient(base_url=daemon.base_url)
    yield client
    client.close()
    daemon.stop()


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A real Slurm cluster of two compute nodes (see tests/slurmcluster.py), stopped (by
    PID) at the end."""
    from slurmcluster import SlurmCluster

    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def job_dir(tmp_path) -> Path:
    """A source directory holding the test job scripts."""
    target = tmp_path / "src"
    shutil.copytree(JOBS, target)
    return target


def wait_until(predicate, timeout: float, what: str):
    """Poll `predicate` until it returns something true (returned); fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def wait_for_line(run, text: str, timeout: float = 300) -> None:
    """Wait until the run's merged log holds `text`; fail early if the run ends first."""
    deadline = time.monotonic() + timeout
    while text not in run.paths.output_log.read_text():
        assert run.get_status() in ("Queued", "Preparing", "Running"), \
            run.paths.output_log.read_text()
        assert time.monotonic() < deadline, f"no {text!r} in the log after {timeout} s"
        time.sleep(0.1)


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*TFSUBMIT, *args], capture_output=True, text=True, timeout=timeout, env=os.environ.copy()
    )
