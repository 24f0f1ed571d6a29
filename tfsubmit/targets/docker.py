"""The Docker target: the job's environment is an image, each of its processes a container.

    my-docker:
      type: docker
      base_url: unix:///var/run/docker.sock
      gpus: all            # or a count; none by default

The docker SDK (and paramiko, for ssh:// engines) loads with this module, which
`targets.config` imports only for docker targets.

Every container of a run is named `tfsubmit-<run>-<role>-<index>`, joins the run's own
network (`tfsubmit-<run>`), where TF_CONFIG reaches each task by its container's name, and
bind-mounts the run's working folder at the same path (the snapshot, outputs/, logs/ and
the metric files), so outputs and live metrics land in the run folder as they are written.
Everything carries the labels `tfsubmit` and `tfsubmit.run=<run id>`: cleanup removes
exactly what the run created, and `close()` leaves no container or network behind.
"""

from __future__ import annotations

import io
import os
import re
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import paramiko
from docker.transport import SSHHTTPAdapter
from docker.types import DeviceRequest

from tfsubmit.errors import TargetError
from tfsubmit.spec.environment import Environment, EnvironmentSpec
from tfsubmit.spec.job import TrainingJob
from tfsubmit.spec.process import LaunchOptions, Node, ProcessSpec
from tfsubmit.store.cancel import CancelFlag
from tfsubmit.store.layout import NODE_FOLDERS
from tfsubmit.store.runlog import RunLog
from tfsubmit.targets.base import Provisioned, ProvisionRequest, check_node_count, merged_lines
from tfsubmit.targets.images import (
    ENV_PYTHON,
    LABEL,
    bootstrap_base,
    image_exists,
    image_freeze,
    resolve_image,
)
from tfsubmit.targets.local import LocalFolders, stage_locally
from tfsubmit.targets.settings import DockerTargetConfig

RUN_LABEL = f"{LABEL}.run"


def _client(config: DockerTargetConfig, *, timeout: float | None):
    """A docker SDK client; for ssh:// engines, one that logs in with the target's key and
    checks the host against its known_hosts (the SDK alone reads only ~/.ssh)."""
    if not config.base_url.startswith("ssh://"):
        return docker.DockerClient(base_url=config.base_url, timeout=timeout)

    class Adapter(SSHHTTPAdapter):
        def _create_paramiko_client(self, base_url):
            super()._create_paramiko_client(base_url)
            if config.key_file:
                self.ssh_params["key_filename"] = str(Path(config.key_file).expanduser())
            known = Path(config.known_hosts).expanduser()
            if known.exists():
                self.ssh_client.load_host_keys(str(known))
            self.ssh_client.set_missing_host_key_policy(paramiko.RejectPolicy())

    try:
        adapter = Adapter(config.base_url, timeout, pool_connections=9, max_pool_size=10)
    except paramiko.SSHException as exc:
        raise TargetError(f"base_url {config.base_url}: SSH login failed ({exc}); check "
                          "key_file, and that the host's key is in known_hosts") from None
    api = docker.APIClient(base_url="unix:///var/run/docker.sock", version="1.41",
                           timeout=timeout)
    api.mount("http+docker://ssh", adapter)  # the SDK's own wiring for ssh://, our adapter
    api._custom_adapter = adapter
    api.base_url = "http+docker://ssh"
    client = docker.DockerClient.__new__(docker.DockerClient)
    client.api = api
    return client


def _tree_tar(folders: list[str]) -> bytes:
    """A tar of whole folders at their absolute paths (put_archive at / recreates them)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for folder in folders:
            tar.add(folder, arcname=folder.lstrip("/"))
    return buffer.getvalue()


def _copy_back(container, workdir: str) -> None:
    """A remote container's outputs/, logs/ and metric files into the local work folder."""
    for name in NODE_FOLDERS:
        try:
            stream, _ = container.get_archive(f"{workdir}/{name}")
        except docker.errors.NotFound:
            continue
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            tar.extractall(workdir, filter="data")


def _name(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_.-]", "-", text)


def container_name(run_id: str, role: str, index: int) -> str:
    return _name(f"tfsubmit-{run_id}-{role}-{index}")


class DockerProcess:
    """A started container, as the supervisor sees processes."""

    ended_by = None  # it ends by itself

    def __init__(self, spec: ProcessSpec, container, copy_back=None) -> None:
        self.spec = spec
        self.container = container
        self.pid = container.short_id
        self.copy_back = copy_back
        self._code: int | None = None
        self._waiter = threading.Thread(target=self._wait, daemon=True)
        self._waiter.start()

    def _wait(self) -> None:
        try:
            code = int(self.container.wait()["StatusCode"])
        except Exception:  # the container is gone (removed by a cancel): it was killed
            code = 137
        if code:
            self.ended_by = self._removed()
        if self.copy_back is not None:  # before the supervisor sees the end: files first
            try:
                self.copy_back(self.container, self.spec.cwd)
            except Exception as exc:
                print(f"tfsubmit: could not copy files out of {self.container.name}: {exc}",
                      file=sys.stderr)
        self._code = code

    def _removed(self) -> str | None:
        """Why it ended, when its container was removed under it (`docker rm -f` kills,
        then removes: given a moment)."""
        for _ in range(5):
            try:
                self.container.reload()
            except docker.errors.NotFound:
                return (f"the container {self.container.name} was removed outside tfsubmit "
                        "(docker rm)")
            except Exception:  # noqa: BLE001 (the engine itself: the exit code says enough)
                return None
            if self.container.status not in ("removing", "exited", "dead"):
                return None
            time.sleep(0.2)
        return None

    def lines(self) -> Iterator[str]:
        """The container's lines from both its streams, stderr's as StderrLine."""
        yield from merged_lines(self._stream(stdout=True, stderr=False),
                                self._stream(stdout=False, stderr=True))

    def _stream(self, **which: bool) -> Iterator[str]:
        pending = ""
        for chunk in self.container.logs(stream=True, follow=True, **which):
            pending += chunk.decode(errors="replace")
            *complete, pending = pending.split("\n")
            yield from (line.rstrip("\r") for line in complete)
        if pending:
            yield pending

    def poll(self) -> int | None:
        return self._code

    def signal_group(self, sig: int) -> None:
        try:
            self.container.kill(signal=int(sig))
        except docker.errors.APIError:
            pass  # not running any more


class DockerTarget(LocalFolders):
    """Containers on one Docker engine; the run folder is bind-mounted into them (ssh://
    engines get it copied in, and their files copied back when each container ends)."""

    def __init__(self, name: str, config: DockerTargetConfig) -> None:
        self.name = name
        self.config = config
        # A remote engine cannot see this machine's folders: copy them in and out instead.
        self.copy_files = config.base_url.startswith("ssh://")
        try:
            self.client = _client(config, timeout=config.timeout)
            self.client.ping()
            # Log streams and waits last as long as the job: no read timeout for those.
            self.streams = _client(config, timeout=None)
        except TargetError:
            raise
        except Exception as exc:
            raise TargetError(f"compute_target {name!r}: the Docker engine at "
                              f"{config.base_url} does not answer ({exc}); start dockerd or "
                              "fix base_url in targets.yaml") from None
        self.gpu_request = None
        # Set by provision: this target object serves that one run.
        self.run_id: str | None = None
        self.image: str | None = None
        self.runtime = ""
        self.network = None

    # -- environment and nodes -----------------------------------------------------------------

    def hosts(self) -> list[Node]:
        return [Node(host=self.name, workdir="", slots=os.cpu_count() or 1, gpus=self._gpus(),
                     address="127.0.0.1")]

    def admit(self, job: TrainingJob) -> None:
        check_node_count(job, self.name, len(self.hosts()))

    def _gpus(self) -> int:
        return 0 if not self.config.gpus or self.config.gpus == "all" else int(self.config.gpus)

    def prepare_environment(self, job: TrainingJob, spec: EnvironmentSpec, *, cache: Path,
                            log: RunLog, cancel: CancelFlag) -> Environment:
        """The job's image: found by its hash or built offline, on custom_docker_image or
        on tfsubmit's base."""
        self._check_gpus(job.use_gpu)

        def on_line(line: str) -> None:
            log.write(f"[tfsubmit:image] {line}")

        if job.custom_docker_image:
            if not image_exists(self.client, job.custom_docker_image):
                raise TargetError(
                    f"custom_docker_image: {job.custom_docker_image!r} is not on the engine "
                    f"at {self.config.base_url}; load or build it there first (tfsubmit never "
                    "pulls)")
            base = job.custom_docker_image
        else:
            base = bootstrap_base(self.client, self.config.base_image, on_line=on_line)
        image, reused, seconds = resolve_image(self.client, spec, base=base,
                                               pip_packages=job.pip_packages, on_line=on_line)
        env = Environment(image.split(":", 1)[1], path=image, python=ENV_PYTHON, reused=reused,
                          freeze=image_freeze(self.client, image), build_seconds=seconds,
                          image=image)
        log.event(f"image {image}: {env.how()}")
        return env

    def _check_gpus(self, use_gpu: bool) -> None:
        if not use_gpu:
            return
        if not self.config.gpus:
            raise TargetError(f"use_gpu: target {self.name!r} has no GPUs configured; set "
                              "`gpus: all` (or a count) in targets.yaml, or use_gpu: false")
        runtimes = self.client.info().get("Runtimes", {})
        if "nvidia" not in runtimes:
            raise TargetError(f"use_gpu: the Docker engine at {self.config.base_url} has no "
                              "NVIDIA runtime (install nvidia-container-toolkit there), so "
                              "containers cannot see GPUs; or set use_gpu: false")
        count = -1 if self.config.gpus == "all" else int(self.config.gpus)
        self.gpu_request = [DeviceRequest(count=count, capabilities=[["gpu"]])]

    def provision(self, request: ProvisionRequest) -> Provisioned:
        """The run's working folder (bind-mounted, or copied in for ssh:// engines)."""
        workdir = stage_locally(request)
        self.run_id = request.run_id
        self.image = request.environment.image
        self.runtime = str(request.runtime)
        node = Node(host=self.name, workdir=str(workdir), slots=os.cpu_count() or 1,
                    gpus=self._gpus(), python=request.environment.python,
                    runtime=self.runtime, address="127.0.0.1")
        return Provisioned([node], {node.host: request.environment})

    def launch_options(self) -> LaunchOptions:
        """Containers run as root (mpirun needs --allow-run-as-root); mpirun's ranks run in
        one container (no remote shell); each task is reached by its container's name."""
        run_id = self.run_id or ""
        return LaunchOptions(as_root=True,
                             task_host=lambda role, index: container_name(run_id, role, index))

    # -- processes -----------------------------------------------------------------------------

    def _labels(self, **more: str) -> dict[str, str]:
        return {LABEL: "run", RUN_LABEL: self.run_id or "", **more}

    def _ensure_network(self):
        if self.network is None:
            self.network = self.client.networks.create(
                _name(f"tfsubmit-{self.run_id}"), driver="bridge", labels=self._labels())
        return self.network

    def start(self, spec: ProcessSpec) -> DockerProcess:
        if not self.image:
            raise TargetError("the Docker target has no image: provision it first")
        workdir = str(Path(spec.cwd))
        mounts = {workdir: {"bind": workdir, "mode": "rw"}}
        if self.runtime:
            mounts[self.runtime] = {"bind": self.runtime, "mode": "ro"}
        name = container_name(self.run_id, spec.role, spec.index)
        self._remove([c for c in self._containers(all=True) if c.name == name])  # a restart
        container = self.client.containers.create(
            self.image,
            command=list(spec.argv),
            name=name,
            hostname=re.sub(r"[^a-zA-Z0-9-]", "-", name)[-63:].strip("-"),  # Open MPI: no "_"
            init=True,  # signals reach the job; its children are reaped
            working_dir=workdir,
            environment=dict(spec.env),
            labels=self._labels(**{f"{LABEL}.role": spec.role,
                                   f"{LABEL}.index": str(spec.index)}),
            network=self._ensure_network().name,
            volumes=None if self.copy_files else mounts,
            device_requests=self.gpu_request,
            shm_size="1g",
        )
        if self.copy_files:  # the snapshot (and outputs so far, for restarts) and the runtime
            container.put_archive("/", _tree_tar(list(mounts)))
        container.start()
        return DockerProcess(spec, self.streams.containers.get(container.id),
                             copy_back=_copy_back if self.copy_files else None)

    def _containers(self, *, all: bool = False) -> list:
        if self.run_id is None:
            return []
        # ignore_removed: a container removed between listing and inspection is gone.
        return self.client.containers.list(all=all, filters={"label": f"{RUN_LABEL}="
                                                              f"{self.run_id}"},
                                           ignore_removed=True)

    def attach(self, run_id: str, nodes: list[Node]) -> list[str]:
        """The run's containers are found by their label; its folders are on this machine."""
        self.run_id = run_id
        return []

    def leftovers(self, run_id: str) -> list[tuple[str, int | str]]:
        """Containers of the run still running."""
        return [(c.name, c.short_id) for c in self._containers()]

    def kill(self, processes: list[tuple[str, int | str]]) -> None:
        names = {name for name, _ in processes}
        self._remove([c for c in self._containers(all=True) if c.name in names])

    def _remove(self, containers: list) -> None:
        for container in containers:
            try:
                container.remove(force=True)
            except docker.errors.NotFound:
                pass

    def close(self) -> None:
        """Remove the run's containers (stopped or not) and its network."""
        self._remove(self._containers(all=True))
        if self.network is not None:
            try:
                self.network.remove()
            except docker.errors.NotFound:
                pass
            self.network = None
        self.client.close()
        self.streams.close()
