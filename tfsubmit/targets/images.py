"""Docker images for jobs: a Debian base tfsubmit builds itself, and one image per environment.

No registry is needed, or reached:

- `bootstrap_base` makes `tfsubmit-base:bookworm` from a `debootstrap` root filesystem via
  `docker import` (Debian's Python 3, venv, Open MPI). The rootfs tarball is cached in
  `~/.cache/tfsubmit/images/`, so another engine on this machine imports it in seconds.
- `resolve_image` builds `tfsubmit-env:<hash>` on the base (or on `custom_docker_image`):
  the wheels are downloaded on this machine, put in the build context and installed with
  `pip --no-index --find-links` in a build that has no network, so air-gapped engines work.
  An image with that tag is reused as it is.

Everything tfsubmit creates carries the label `tfsubmit`, so cleanup is exact.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import docker.errors

from tfsubmit.errors import EnvironmentBuildError, TargetError
from tfsubmit.spec.environment import HOROVOD, EnvironmentSpec
from tfsubmit.targets.envbuild import default_wheel_cache, run_logged

LABEL = "tfsubmit"
ENV_PREFIX = "/opt/tfsubmit-env"
ENV_PYTHON = f"{ENV_PREFIX}/bin/python"
IMAGE_LAYOUT = 2
DEBIAN_PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates", "procps",
                   "openmpi-bin", "libopenmpi3")
DEBIAN_MIRROR = os.environ.get("TFSUBMIT_DEBIAN_MIRROR", "http://deb.debian.org/debian")

LineSink = Callable[[str], None]


def cache_dir() -> Path:
    return Path(os.environ.get("TFSUBMIT_IMAGE_CACHE", "~/.cache/tfsubmit/images")).expanduser()


def wheelhouse() -> Path:
    return cache_dir() / "wheelhouse"


def image_exists(client, tag: str) -> bool:
    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


def _suite_of(tag: str) -> str:
    return tag.rsplit(":", 1)[-1] if ":" in tag else "bookworm"


def bootstrap_base(client, tag: str = "tfsubmit-base:bookworm", *,
                   on_line: LineSink = print) -> str:
    """Make the base image (Debian minbase + Python + Open MPI) unless the engine has it."""
    if image_exists(client, tag):
        return tag
    suite = _suite_of(tag)
    tarball = cache_dir() / f"rootfs-{suite}.tar"
    if not tarball.exists():
        debootstrap = shutil.which("debootstrap")
        if not debootstrap:
            raise TargetError(f"building the base image {tag} needs debootstrap (apt-get "
                              "install debootstrap), or load an image with that tag yourself")
        if os.geteuid() != 0:
            raise TargetError(f"building the base image {tag} runs debootstrap, which needs "
                              "root; run `tfsubmit image bootstrap` as root once")
        tarball.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=tarball.parent) as scratch:
            rootfs = Path(scratch) / "rootfs"
            on_line(f"debootstrap {suite} (minbase, {', '.join(DEBIAN_PACKAGES)}) from "
                    f"{DEBIAN_MIRROR}")
            run_logged([debootstrap, "--variant=minbase",
                        f"--include={','.join(DEBIAN_PACKAGES)}", suite, str(rootfs),
                        DEBIAN_MIRROR], on_line, None,
                       advice=f"check that the Debian mirror {DEBIAN_MIRROR} is reachable "
                              "(TFSUBMIT_DEBIAN_MIRROR)")
            partial = tarball.with_suffix(".partial")
            subprocess.run(["tar", "-C", str(rootfs), "-cf", str(partial), "."], check=True)
            os.replace(partial, tarball)
    on_line(f"docker import {tarball.name} as {tag}")
    repository, _, version = tag.partition(":")
    client.api.import_image(src=str(tarball), repository=repository, tag=version or "latest",
                            changes=[f"LABEL {LABEL}=base", "ENV LANG=C.UTF-8",
                                     "CMD [\"python3\"]"])
    return tag


def image_hash(spec: EnvironmentSpec, base_id: str) -> str:
    payload = json.dumps({"layout": IMAGE_LAYOUT, "env": spec.hash, "base": base_id},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _image_python(client, image: str) -> str:
    """The X.Y of the image's python3 (the wheels must fit it)."""
    out = client.containers.run(image, ["python3", "-c", "import sys; print('%d.%d' % "
                                        "sys.version_info[:2])"], remove=True,
                                network_mode="none", labels={LABEL: "probe"})
    return out.decode().strip()


def download_wheels(requirements: list[str], python: str, dest: Path,
                    on_line: LineSink) -> list[Path]:
    """Wheels for `requirements` and their dependencies, for Linux x86_64 and `python`, kept
    in `dest` (shared between builds); returns the files this set needs."""
    dest.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check",
            "--progress-bar", "off", "--dest", str(dest), *requirements]
    here = "{}.{}".format(*sys.version_info[:2])
    if python != here:  # another Python than ours: only wheels, for that Python
        argv += ["--only-binary=:all:", "--python-version", python,
                 "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_28_x86_64"]
    lines = run_logged(argv, on_line, None)
    found = [Path(m[1]) for line in lines
             if (m := re.match(r"\s*(?:Saved|File was already downloaded) (\S+)", line))]
    return [path if path.is_absolute() else dest / path.name for path in found]


def _horovod_wheel(spec: EnvironmentSpec, python: str) -> Path | None:
    """A cached Horovod wheel (built by an mpi run on the local target) for the spec's
    TensorFlow and this Python."""
    tf = next(r for r in spec.requirements if r.startswith("tensorflow"))
    package, version = tf.split("==")
    version = version.rstrip(".*")
    pattern = f"horovod-*-{package}-{version}*-py{python}-*"
    for folder in sorted(default_wheel_cache().glob(pattern)):
        found = sorted(folder.glob("horovod-*.whl"))
        if found:
            return found[0]
    return None


def resolve_image(client, spec: EnvironmentSpec, *, base: str, pip_packages: list[str],
                  on_line: LineSink) -> tuple[str, bool, float]:
    """The environment's image tag; built (offline, from downloaded wheels) when missing.

    Two layers: `tfsubmit-tf:<hash>` holds TensorFlow (and Horovod's parts for mpi) on the
    base, shared by every job with that framework; `tfsubmit-env:<hash>` adds the job's
    pip_packages. Returns (tag, reused, build seconds).
    """
    base_id = client.images.get(base).id
    tag = f"tfsubmit-env:{image_hash(spec, base_id)}"
    if image_exists(client, tag):
        return tag, True, 0.0
    began = time.monotonic()
    python = _image_python(client, base)
    framework = [r for r in spec.requirements if r not in pip_packages]
    framework_spec = EnvironmentSpec(spec.python_version, tuple(framework))
    tf_tag = f"tfsubmit-tf:{image_hash(framework_spec, base_id)}"
    if image_exists(client, tf_tag):
        on_line(f"framework image {tf_tag}: reused")
    else:
        _build_layer(client, base, tf_tag, framework, python, spec, on_line, new_env=True)
    _build_layer(client, tf_tag, tag, list(pip_packages), python, spec, on_line, new_env=False)
    return tag, False, time.monotonic() - began


def _build_layer(client, base: str, tag: str, requirements: list[str], python: str,
                 spec: EnvironmentSpec, on_line: LineSink, *, new_env: bool) -> None:
    plain = [r for r in requirements if r != HOROVOD]
    pip = f"{ENV_PREFIX}/bin/pip install --disable-pip-version-check --no-index " \
          "--find-links /tmp/tfsubmit-wheels"
    steps = [f"python3 -m venv {ENV_PREFIX}"] if new_env else []
    with tempfile.TemporaryDirectory(dir=_scratch_dir()) as context_dir:
        context = Path(context_dir)
        wheels = context / "wheels"
        wheels.mkdir()
        if plain:
            on_line(f"downloading wheels for Python {python}: {', '.join(plain)}")
            _link(download_wheels(plain, python, wheelhouse() / python, on_line), wheels)
            steps.append(f"{pip} " + " ".join(f"'{r}'" for r in plain))
        if HOROVOD in requirements:
            wheel = _horovod_wheel(spec, python)
            if wheel is None:
                raise EnvironmentBuildError(
                    "the Horovod wheel for this image is not built yet: submit the mpi job to "
                    "the local target once (it builds and caches the wheel), then retry")
            shutil.copy2(wheel, wheels / wheel.name)
            steps.append(f"{pip} --no-deps /tmp/tfsubmit-wheels/{wheel.name}")
        steps += [f"{ENV_PREFIX}/bin/pip freeze > {ENV_PREFIX}/freeze.txt",
                  "rm -rf /tmp/tfsubmit-wheels"]
        kind = "env" if not new_env else "framework"
        (context / "Dockerfile").write_text(
            f"FROM {base}\n"
            "COPY wheels/ /tmp/tfsubmit-wheels/\n"
            f"RUN {' && '.join(steps)}\n"
            f"LABEL {LABEL}={kind} {LABEL}.env={spec.hash}\n"
        )
        on_line(f"building {tag} on {base} (no network in the build)")
        _build(client, context, tag, on_line, kind)


def _build(client, context: Path, tag: str, on_line: LineSink, kind: str) -> None:
    tail: list[str] = []
    for chunk in client.api.build(path=str(context), tag=tag, network_mode="none", rm=True,
                                  forcerm=True, decode=True, labels={LABEL: kind}):
        if "error" in chunk:
            raise EnvironmentBuildError(f"building image {tag} failed: {chunk['error']}\n"
                                        + "\n".join(tail))
        for line in chunk.get("stream", "").splitlines():
            if line.strip():
                on_line(line)
                tail = (tail + [line])[-20:]


def _scratch_dir() -> Path:
    path = cache_dir() / "build"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _link(files: list[Path], dest: Path) -> None:
    """Hard links when on one disk (the wheels are big), copies otherwise."""
    for path in files:
        try:
            os.link(path, dest / path.name)
        except OSError:
            shutil.copy2(path, dest / path.name)


def image_freeze(client, tag: str) -> str:
    cached = cache_dir() / f"{tag.replace(':', '-')}.freeze.txt"
    if cached.exists():
        return cached.read_text()
    out = client.containers.run(tag, ["cat", f"{ENV_PREFIX}/freeze.txt"], remove=True,
                                network_mode="none", labels={LABEL: "probe"}).decode()
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(out)
    return out
