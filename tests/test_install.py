"""A fresh install (issue 28): the checkout installed (`pip install .`, with uv's pip for
speed) into a new venv trains the example on the local target as an unprivileged user
(nobody, its own HOME): no root, no system package, the embedded server started by the
first submission."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import EXAMPLE, ROOT

pytestmark = pytest.mark.e2e
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]


def _own(path: Path) -> None:
    """Hand `path` to nobody."""
    for folder, _, files in os.walk(path):
        os.chown(folder, 65534, 65534)
        for name in files:
            os.chown(os.path.join(folder, name), 65534, 65534, follow_symlinks=False)


@pytest.fixture
def sandbox():
    root = Path(tempfile.mkdtemp(prefix="tfsubmit-install-"))
    root.chmod(0o755)  # nobody reaches the venv, its HOME inside
    yield root
    shutil.rmtree(root, ignore_errors=True)


# The system's Python, as a fresh machine has it (an interpreter under /root, pyenv's
# say, is out of nobody's reach).
SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv")
                    or not os.access(SYSTEM_PYTHON, os.X_OK),
                    reason="needs root to switch to nobody, and the system's python3")
def test_pip_install_into_a_new_venv_trains_the_example_without_root(sandbox):
    venv = sandbox / "venv"
    uv = [sys.executable, "-m", "uv"]
    subprocess.run([*uv, "venv", "-q", "--python", SYSTEM_PYTHON, str(venv)], check=True,
                   timeout=120)
    installed = subprocess.run([*uv, "pip", "install", "-q", "--python",
                                str(venv / "bin" / "python"), str(ROOT)],
                               capture_output=True, text=True, timeout=900)
    assert installed.returncode == 0, installed.stderr[-3000:]
    home = sandbox / "home"
    shutil.copytree(EXAMPLE, home / "example")
    # uv downloads what nobody's environment needs into nobody's own cache, as on a
    # fresh machine (root's cache is root's).
    cache = home / ".cache" / "uv"
    cache.mkdir(parents=True)
    _own(home)
    env = {"HOME": str(home), "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
           "UV_CACHE_DIR": str(cache), "UV_LINK_MODE": "copy", "LANG": "C.UTF-8",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    try:
        done = subprocess.run([*NOBODY, str(venv / "bin" / "tfsubmit"), "submit",
                               str(home / "example" / "job.yaml")], env=env, cwd=home,
                              capture_output=True, text=True, timeout=1200)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "[worker:0@local] Epoch 3/3" in done.stdout
        runs = list((home / ".tfsubmit" / "runs").iterdir())
        assert len(runs) == 1 and (runs[0] / "outputs" / "model.keras").is_file()
        assert runs[0].stat().st_uid == 65534  # made by nobody, in nobody's HOME
    finally:
        subprocess.run([*NOBODY, str(venv / "bin" / "tfsubmit"), "server", "stop"], env=env,
                       cwd=home, capture_output=True, timeout=120)
