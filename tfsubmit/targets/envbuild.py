"""Building job environments: isolated Python environments keyed by their spec's hash.

An environment is built once (with uv when available, else venv + pip) under the shared
environment cache and reused by every later job with the same inputs: the second job
installs nothing. The orchestrator never imports TensorFlow; only the job's interpreter does.
Standard library only: the host agent runs this module on SSH hosts to build there.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from tfsubmit.errors import DownloadError, EnvironmentBuildError
from tfsubmit.spec.environment import Environment, EnvironmentSpec
from tfsubmit.system.processes import SERVICE_MARKER, signal_group, terminate_then_kill

MARKER = ".tfsubmit-env.json"
# Seconds a canceled install step has to stop before it is killed.
STOP_GRACE = 5.0
CONDA_TOOLS = ("micromamba", "mamba", "conda")


def find_conda() -> str | None:
    for tool in CONDA_TOOLS:
        found = shutil.which(tool)
        if found:
            return found
    return None


def find_uv() -> str | None:
    if sys.flags.no_site:  # the SSH host agent runs `python -S`: site-packages only now
        import site

        site.main()
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        return shutil.which("uv")


LineSink = Callable[[str], None]


def resolve_environment(
    spec: EnvironmentSpec,
    cache_dir: Path,
    *,
    on_line: LineSink = lambda line: None,
    cancel: threading.Event | None = None,
) -> Environment:
    """Return the environment for `spec`, building it only if the cache lacks it.

    Concurrent callers for the same spec wait on a lock; exactly one builds.
    """
    if spec.conda_packages and not find_conda():
        raise EnvironmentBuildError(
            f"conda_packages {list(spec.conda_packages)} need conda, mamba or micromamba on "
            "PATH; install micromamba (https://mamba.readthedocs.io) or move the packages to "
            "pip_packages"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    env_dir = cache_dir / spec.hash
    with (cache_dir / f"{spec.hash}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        marker = env_dir / MARKER
        if marker.exists():
            info = json.loads(marker.read_text())
            return Environment(spec.hash, str(env_dir), info["python"], True, info["freeze"])
        if env_dir.exists():  # a build that died half-way: start over
            shutil.rmtree(env_dir)
        started = time.monotonic()
        try:
            python = _build(spec, env_dir, on_line=on_line, cancel=cancel)
            freeze = _freeze(python)
        except BaseException:
            shutil.rmtree(env_dir, ignore_errors=True)
            raise
        marker.write_text(
            json.dumps({"python": python, "freeze": freeze, "spec": asdict(spec)})
        )
        elapsed = time.monotonic() - started
        return Environment(spec.hash, str(env_dir), python, False, freeze, elapsed)


def _build(
    spec: EnvironmentSpec, env_dir: Path, *, on_line: LineSink, cancel: threading.Event | None
) -> str:
    python = str(env_dir / "bin" / "python")
    uv = find_uv()
    conda = find_conda() if spec.conda_packages else None
    if conda:
        major_minor = ".".join(spec.python_version.split(".")[:2])
        run_logged([conda, "create", "-y", "-p", str(env_dir), f"python={major_minor}",
                    "pip", *spec.conda_packages], on_line, cancel)
    elif uv:
        run_logged([uv, "venv", "--quiet", "--python", sys.executable, str(env_dir)], on_line,
                   cancel)
    else:
        run_logged([sys.executable, "-m", "venv", str(env_dir)], on_line, cancel)
    if uv:
        install = [uv, "pip", "install", "--compile-bytecode", "--python", python]
    else:
        install = [python, "-m", "pip", "install", "--disable-pip-version-check"]
    special = ("horovod==", "tf-keras==")
    plain = [r for r in spec.requirements if not r.startswith(special)]
    run_logged([*install, *plain], on_line, cancel,
               what=f"installing {len(plain)} requirement(s): downloading, unpacking, "
               "compiling bytecode")
    for requirement in spec.requirements:
        if requirement.startswith("tf-keras=="):  # --no-deps: it would pull another TF
            run_logged([*install, "--no-deps", requirement], on_line, cancel)
        elif requirement.startswith("horovod=="):
            wheel = horovod_wheel(python, requirement, install, on_line=on_line, cancel=cancel)
            run_logged([*install, "--no-deps", str(wheel)], on_line, cancel)
    return python


def default_wheel_cache() -> Path:
    return Path(os.environ.get("TFSUBMIT_WHEEL_CACHE", "~/.cache/tfsubmit/wheels")).expanduser()


def _mpi_version() -> str:
    try:
        out = subprocess.run(["mpirun", "--version"], capture_output=True, text=True).stdout
    except FileNotFoundError:
        raise EnvironmentBuildError(
            "distributed_backend='mpi' needs Open MPI on every host: install openmpi-bin and "
            "libopenmpi-dev (apt-get install openmpi-bin libopenmpi-dev)"
        ) from None
    return out.split("\n", 1)[0].split()[-1]


def horovod_wheel(python: str, requirement: str, install: list[str], *,
                  on_line: LineSink, cancel: threading.Event | None) -> Path:
    """Horovod's wheel for this environment's TensorFlow, Python and Open MPI: built once
    (about 150 s, 4 GiB of memory) into the wheel cache, then reused (about 2 s)."""
    probe = ("import importlib.metadata as m, sys\n"
             "for name in ('tensorflow-cpu', 'tensorflow'):\n"
             "    try: print(name, m.version(name)); break\n"
             "    except m.PackageNotFoundError: pass\n"
             "print(*sys.version_info[:2], sep='.')")
    tf_line, py = subprocess.run([python, "-c", probe], check=True, capture_output=True,
                                 text=True).stdout.split("\n")[:2]
    version = requirement.split("==", 1)[1]
    key = f"horovod-{version}-{tf_line.replace(' ', '-')}-py{py}-openmpi-{_mpi_version()}"
    folder = default_wheel_cache() / key
    found = sorted(folder.glob("horovod-*.whl"))
    if found:
        on_line(f"horovod: using the cached wheel {found[0]}")
        return found[0]
    on_line(f"horovod: building the wheel for {key} (about 150 s, once)")
    run_logged([*install, "pip", "wheel", "setuptools", "cmake", "packaging"], on_line, cancel)
    build = folder.with_name(f".{key}.{os.getpid()}")
    flags = {"HOROVOD_WITH_TENSORFLOW": "1", "HOROVOD_WITH_MPI": "1",
             "HOROVOD_WITHOUT_PYTORCH": "1", "HOROVOD_WITHOUT_MXNET": "1",
             "HOROVOD_WITHOUT_GLOO": "1"}
    run_logged([python, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                "--disable-pip-version-check", "-w", str(build), requirement], on_line, cancel,
               extra_env=flags)
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(build, folder)
    except OSError:  # built meanwhile by another job: use theirs
        shutil.rmtree(build, ignore_errors=True)
    return sorted(folder.glob("horovod-*.whl"))[0]


def _freeze(python: str) -> str:
    uv = find_uv()
    argv = [uv, "pip", "freeze", "--python", python] if uv else [python, "-m", "pip", "freeze"]
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


# uv's " + name==version" lines: one per installed package, kept in the freeze file instead.
_PACKAGE_LINE = re.compile(r"^ [+-] [A-Za-z0-9_.-]+(==| @ )")
# An install step that prints nothing for this long (downloading, compiling bytecode)
# gets a line saying it is still at work.
HEARTBEAT_SECONDS = 5.0


def run_logged(argv: list[str], on_line: LineSink, cancel: threading.Event | None,
               extra_env: dict[str, str] | None = None, *,
               advice: str = "check the package names and versions",
               what: str = "") -> list[str]:
    """Run an install step, streaming its output line by line (and a line saying it is
    still at work after every HEARTBEAT_SECONDS of silence); stop it on cancel.
    Returns the lines it printed."""
    what = what or f"still running {Path(argv[0]).name} {argv[1] if len(argv) > 1 else ''}"
    process = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        # Marked as tfsubmit's own: a job's leftover check never takes a build for its own.
        # uv trusts the host's certificate store, as pip and curl there do (uv's own roots
        # refuse a site's TLS-inspecting proxy; an SSH login has no SSL_CERT_FILE to say so).
        # UV_SYSTEM_CERTS is its name now (uv 0.13 warns that UV_NATIVE_TLS is deprecated).
        env={**os.environ, "UV_NO_PROGRESS": "1", SERVICE_MARKER: "environment-build",
             **({} if "UV_NATIVE_TLS" in os.environ else
                {"UV_SYSTEM_CERTS": os.environ.get("UV_SYSTEM_CERTS", "1")}),
             **(extra_env or {})},
    )
    lines: list[str] = []
    heard = [time.monotonic()]
    began = time.monotonic()

    def heartbeat() -> None:  # a line at least every HEARTBEAT_SECONDS: never a silent wait
        while process.poll() is None:
            time.sleep(0.5)
            if time.monotonic() - heard[0] >= HEARTBEAT_SECONDS and process.poll() is None:
                heard[0] = time.monotonic()
                on_line(f"... {what} ({time.monotonic() - began:.0f} s so far)")
    threading.Thread(target=heartbeat, daemon=True).start()
    watcher = None
    if cancel is not None:
        def watch() -> None:
            while process.poll() is None:
                if cancel.wait(0.2):
                    terminate_then_kill(lambda sig: signal_group(process.pid, sig),
                                        lambda: process.poll() is None, grace=STOP_GRACE)
                    return
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
    assert process.stdout is not None
    for line in process.stdout:
        line = line.rstrip("\n")
        lines.append(line)
        heard[0] = time.monotonic()
        if not _PACKAGE_LINE.match(line):  # the package list is the run's freeze file
            on_line(line)
    code = process.wait()
    if cancel is not None and cancel.is_set():
        raise EnvironmentBuildError("environment build canceled")
    if code != 0:  # its lines were streamed already: name the error, not the whole tail
        if any(_NETWORK.search(line) for line in lines):  # may pass: the step is retried
            raise DownloadError(
                f"`{' '.join(argv[:3])} ...` could not reach the package index (exit code "
                f"{code}): {_error_of(lines)}; check the network and the index "
                "(PIP_INDEX_URL, UV_INDEX_URL)")
        raise EnvironmentBuildError(
            f"`{' '.join(argv[:3])} ...` failed with exit code {code}: "
            f"{_error_of(lines)}; {advice}"
        )
    return lines


# What pip and uv print when the package index did not answer (as opposed to a package or
# version that does not exist): a failure that may pass.
_NETWORK = re.compile(
    r"connection refused|connection reset|connection aborted|timed out|"
    r"temporary failure in name resolution|name or service not known|network is "
    r"unreachable|error sending request|tcp connect error|dns error|NewConnectionError|"
    r"Max retries exceeded|ReadTimeoutError|ProtocolError|server error \(5\d\d|"
    r"\b50[234] (Service Unavailable|Bad Gateway|Gateway Time-?out)", re.IGNORECASE)


def _error_of(lines: list[str]) -> str:
    """The installer's own error in a line: uv's `× ...`/`error: ...` (and the reason
    under it), pip's `ERROR: ...`; else its last line."""
    text = [line.strip() for line in lines if line.strip()]
    for i, line in enumerate(text):
        if line.startswith(("×", "error:", "ERROR:")):
            detail = [re.sub(r"^(╰─▶|│|cause:)\s*", "", part) for part in text[i + 1:i + 3]
                      if part.startswith(("╰─▶", "│", "cause:"))]
            return ": ".join([line.lstrip("× ").rstrip(":"), *detail])[:500]
    return (text[-1] if text else "no output")[:500]
