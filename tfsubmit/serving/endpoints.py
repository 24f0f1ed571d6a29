"""Endpoints: registered models served over HTTP, on a compute target of the user's.

    <workspace>/endpoints/<name>/endpoint.json     {name, target, host, port, current, ...}
    <workspace>/endpoints/<name>/versions/<n>.json one deployed version's spec
    <workspace>/endpoints/<name>/source/<n>/       the scoring script's folder, as deployed
    <workspace>/endpoints/<name>/state.json        the supervisor's (endpoint/supervisor.py)
    <workspace>/endpoints/<name>/endpoint.log      its lines and its servers'

A deployment is a `deploy-model` flow run: `plan` (here, before any flow run: bad input is
refused at once, nothing made), then the flow's steps `environment`, `provision`, `start`
and `healthy`. An update is a new version of the same endpoint: the supervisor starts it
beside the old one and switches once it is ready.
"""

from __future__ import annotations

import ast
import json
import os
import posixpath
import re
import secrets
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tfsubmit.errors import EndpointError, JobSpecError, NotSupportedError
from tfsubmit.service.server import free_port
from tfsubmit.serving.hosts import SERVER, LocalFiles, SSHFiles
from tfsubmit.spec.environment import (
    Environment,
    EnvironmentSpec,
    local_content,
    tensorflow_package,
)
from tfsubmit.spec.job import DEFAULT_FRAMEWORK_VERSION
from tfsubmit.store.layout import Workspace, read_json, write_json
from tfsubmit.store.package import runtime_dir
from tfsubmit.store.registry import ModelRegistry, parse_reference
from tfsubmit.targets.config import get_target
from tfsubmit.targets.docker import DockerTarget
from tfsubmit.targets.envbuild import resolve_environment
from tfsubmit.targets.images import ENV_PYTHON, bootstrap_base, resolve_image
from tfsubmit.targets.local import LocalTarget
from tfsubmit.targets.ssh import SSHTarget

# What the endpoint's server needs beside the model's own packages: a maintained ASGI stack.
SERVING_PACKAGES = ("starlette>=0.40", "uvicorn>=0.30")
_NAME = re.compile(r"[a-z][a-z0-9-]{1,30}[a-z0-9]")  # Azure's rule for service names
ENDPOINT_LABEL = "tfsubmit.endpoint"
HEALTHY, UNHEALTHY, FAILED, TRANSITIONING = "Healthy", "Unhealthy", "Failed", "Transitioning"


def check_scoring_script(path: Path) -> None:
    """A scoring script must define init() and run(raw_data) at its top level."""
    if not path.is_file():
        raise JobSpecError(f"entry_script {str(path)!r} is not a file; give the scoring "
                           "script's path (relative to source_directory)")
    try:
        tree = ast.parse(path.read_text(errors="replace"), filename=str(path))
    except SyntaxError as exc:
        raise JobSpecError(f"entry_script {str(path)!r} does not parse: line {exc.lineno}: "
                           f"{exc.msg}") from None
    defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    missing = [name for name in ("init", "run") if name not in defined]
    if missing:
        raise JobSpecError(f"entry_script {str(path)!r} defines no {' and no '.join(missing)}"
                           "(): a scoring script needs init() (load the model) and "
                           "run(raw_data) (answer one request)")


class Endpoints:
    """The workspace's endpoints."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self.root = workspace.root / "endpoints"
        self._ssh: dict[str, tuple[SSHTarget, Any]] = {}  # target name: (target, 1st host)
        self._reports: dict[str, dict] = {}
        self._engines: dict[str, DockerTarget] = {}

    def close(self) -> None:
        for target, _ in self._ssh.values():
            target.close()
        self._ssh.clear()
        for engine in self._engines.values():
            engine.client.close()
            engine.streams.close()
        self._engines.clear()

    def _files(self, config: dict[str, Any]) -> LocalFiles | SSHFiles:
        """Where the endpoint's supervisor keeps its files."""
        if config["kind"] != "ssh":
            return LocalFiles(self.folder(config["name"]))
        target, conn = self._connection(config["target"])
        return SSHFiles(conn, posixpath.join(target.config.workdir, "endpoints",
                                             config["name"]))

    def _connection(self, name: str) -> tuple[SSHTarget, Any]:
        """The SSH target's first host, connected (and pre-flight checked) once."""
        if name not in self._ssh:
            target = get_target(name, self.workspace.root)
            assert isinstance(target, SSHTarget)
            self._reports.update(target.connect())
            first = target.config.hosts[0].address
            self._ssh[name] = (target, target.connections[first])
        return self._ssh[name]

    def folder(self, name: str) -> Path:
        return self.root / name

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir()
                      if (p / "endpoint.json").is_file()) if self.root.is_dir() else []

    def config(self, name: str) -> dict[str, Any]:
        found = read_json(self.folder(name) / "endpoint.json") if _NAME.fullmatch(name) \
            else None
        if not found:
            raise EndpointError(f"no endpoint {name!r} (endpoints: "
                                f"{', '.join(self.names()) or 'none'})")
        return found

    def spec(self, name: str, version: int) -> dict[str, Any]:
        return read_json(self.folder(name) / "versions" / f"{version}.json") or {}

    # -- state ---------------------------------------------------------------------------

    def state(self, name: str) -> dict[str, Any]:
        """The supervisor's state, made true: Failed when its supervisor is gone."""
        config = self.config(name)
        files = self._files(config)
        state = _json(files.read("state.json")) or {"state": TRANSITIONING}
        started = config.get("container") or files.read("supervisor.json") is not None
        if started and state.get("state") in (HEALTHY, UNHEALTHY, TRANSITIONING) \
                and not self._supervisor_alive(config):
            state = {**state, "state": FAILED,
                     "error": state.get("error") or "its supervisor is not running"}
        version = state.get("version") or config["current"]
        spec = self.spec(name, version)
        port = state.get("port") or config.get("port")
        address = config.get("address", "127.0.0.1")
        return {**state, "name": name, "target": config["target"],
                "model": f"{spec.get('model_name')}:{spec.get('model_version')}",
                "scoring_uri": f"http://{address}:{port}/score",
                "swagger_uri": f"http://{address}:{port}/swagger.json",
                "base_uri": f"http://{address}:{port}",
                "tfserving": not spec.get("score_script"),
                "keys": spec.get("keys") or [], "current": config["current"]}

    def _supervisor_alive(self, config: dict[str, Any]) -> bool:
        if config.get("container"):
            try:
                return self._docker(config).client.containers.get(
                    config["container"]).status in ("created", "running")
            except Exception:  # noqa: BLE001 (gone, or the engine is)
                return False
        files = self._files(config)
        pid = (_json(files.read("supervisor.json")) or {}).get("pid")
        return bool(pid) and files.is_supervisor(pid)

    def _docker(self, config: dict[str, Any]) -> DockerTarget:
        """The Docker target's engine, connected once."""
        if config["target"] not in self._engines:
            target = get_target(config["target"], self.workspace.root)
            assert isinstance(target, DockerTarget)
            self._engines[config["target"]] = target
        return self._engines[config["target"]]

    # -- deploying -------------------------------------------------------------------------

    def plan(self, name: str, model: str, *, score_script: str | None = None,
             source_directory: str | None = None, target: str = "local",
             port: int | None = None, auth: bool = False,
             pip_packages: tuple[str, ...] | list[str] = (), overwrite: bool = False,
             update: bool = False) -> int:
        """Check a deployment and write its version's spec; returns the version number.
        Refuses bad input before anything is made: an unknown model or version, a scoring
        script without init/run, a port in use, an endpoint that exists (without
        overwrite) or does not (for an update)."""
        if not _NAME.fullmatch(name or ""):
            raise JobSpecError(f"name {name!r}: 3 to 32 lower-case letters, digits and '-', "
                               "starting with a letter (Azure's rule for service names)")
        model_name, model_version = parse_reference(model)
        registry = ModelRegistry(self.workspace)
        info = registry.get(model_name, model_version)
        existing = read_json(self.folder(name) / "endpoint.json")
        running = bool(existing) and self.state(name)["state"] in (HEALTHY, UNHEALTHY,
                                                                    TRANSITIONING)
        if update and not existing:
            raise EndpointError(f"no endpoint {name!r} to update (endpoints: "
                                f"{', '.join(self.names()) or 'none'})")
        if existing and not (overwrite or update):
            raise EndpointError(f"endpoint {name!r} exists (serving "
                                f"{self.state(name)['model']}); update it, deploy with "
                                "overwrite=True (--overwrite), or delete it first")
        script = root = None
        if score_script:
            base = Path(source_directory or ".").resolve()
            script = (base / score_script).resolve()
            check_scoring_script(script)
            if not script.is_relative_to(base):
                raise JobSpecError(f"entry_script {score_script!r} is outside "
                                   f"source_directory {str(base)!r}")
            # What is deployed with it: source_directory, else the script's own folder.
            root = base if source_directory else script.parent
        kind = self._target_kind(target)
        if running and existing["target"] != target:
            raise EndpointError(f"endpoint {name!r} runs on target {existing['target']!r}; "
                                f"delete it to deploy on {target!r}")
        if port is not None and not 0 < int(port) < 65536:
            raise JobSpecError(f"port {port}: give a port from 1 to 65535")
        if running:
            port = existing["port"]
        elif port is not None:
            if kind != "ssh":  # an SSH host's supervisor says so itself, naming the port
                _check_port_free(int(port))
        else:
            port = free_port()
        folder = self.folder(name)
        (folder / "versions").mkdir(parents=True, exist_ok=True)
        version = max((int(p.stem) for p in (folder / "versions").glob("*.json")),
                      default=0) + 1
        source = None
        if script is not None:
            source = folder / "source" / str(version)
            shutil.rmtree(source, ignore_errors=True)
            shutil.copytree(root, source, ignore=shutil.ignore_patterns("__pycache__", ".git"))
        old_keys = (self.spec(name, existing["current"]).get("keys") if existing else None)
        keys = (old_keys or [secrets.token_urlsafe(24), secrets.token_urlsafe(24)]) \
            if auth else []
        job = info.get("job") or {}
        spec = {
            "endpoint": name, "version": version, "model_name": info["name"],
            "model_version": info["version"],
            "model_dir": str(registry.model_dir(info)),
            "model_path": str(registry.model_path(info)),
            "score_script": str(source / script.relative_to(root)) if source else None,
            "cwd": str(source) if source else None,
            "framework_version": job.get("framework_version"),
            "use_gpu": bool(job.get("use_gpu")),
            "pip_packages": [*job.get("pip_packages", []), *pip_packages],
            "keys": keys,
        }
        write_json(folder / "versions" / f"{version}.json", spec)
        if not existing or (overwrite and not running):
            address = self._address(target) if kind == "ssh" else "127.0.0.1"
            write_json(folder / "endpoint.json", {
                "name": name, "target": target, "kind": kind, "port": int(port),
                "host": address, "address": address, "current": version,
                "created": time.time(), "liveness_seconds": 5})
        return version

    def plan_update(self, name: str, model: str | None = None, *,
                    score_script: str | None = None, source_directory: str | None = None,
                    pip_packages: tuple[str, ...] | list[str] = ()) -> int:
        """The next version of a deployed endpoint: another model version (default: the
        one it serves) with its scoring script (default: the one it runs, as deployed)."""
        config = self.config(name)
        current = self.spec(name, config["current"])
        if model is None:
            model = f"{current['model_name']}:{current['model_version']}"
        if score_script is None and current.get("score_script"):
            score_script = str(Path(current["score_script"]).relative_to(current["cwd"]))
            source_directory = source_directory or current["cwd"]
        return self.plan(name, model, score_script=score_script,
                         source_directory=source_directory, target=config["target"],
                         auth=bool(current.get("keys")), pip_packages=pip_packages,
                         update=True)

    def _target_kind(self, target: str) -> str:
        found = get_target(target, self.workspace.root)
        if isinstance(found, LocalTarget):
            return "local"
        if isinstance(found, DockerTarget):
            if found.copy_files:
                raise NotSupportedError(f"target {target!r}: endpoints run on docker engines "
                                        "of this machine (unix://) in this version; its "
                                        "engine is remote")
            found.client.close()
            found.streams.close()
            return "docker"
        if isinstance(found, SSHTarget):
            return "ssh"
        raise NotSupportedError(f"target {target!r}: endpoints run on the local target, on "
                                "docker and on SSH targets in this version (Slurm targets "
                                "train only)")

    def _address(self, target: str) -> str:
        """An SSH target's endpoint serves on its first host."""
        found = get_target(target, self.workspace.root)
        return found.config.hosts[0].address

    # -- the deploy-model flow's steps ------------------------------------------------------

    def environment(self, name: str, version: int, say: Callable[[str], None]) -> Environment:
        """The inference environment: TensorFlow as the model was trained with, its pip
        packages, and the server's; built once and cached like training environments."""
        config, spec = self.config(name), self.spec(name, version)
        tf_req = tensorflow_package(spec.get("framework_version") or DEFAULT_FRAMEWORK_VERSION,
                                    gpu=bool(spec.get("use_gpu")))
        requirements = (tf_req, *SERVING_PACKAGES, *spec.get("pip_packages", []))
        env_spec = EnvironmentSpec(python_version="{}.{}.{}".format(*sys.version_info[:3]),
                                   requirements=requirements,
                                   local_content=local_content(requirements))
        if config["kind"] == "docker":
            target = self._docker(config)
            base = bootstrap_base(target.client, target.config.base_image, on_line=say)
            image, reused, seconds = resolve_image(target.client, env_spec, base=base,
                                                   pip_packages=list(spec["pip_packages"]),
                                                   on_line=say)
            say(f"image {image}: {'reused' if reused else f'built in {seconds:.1f} s'}")
            return Environment(env_spec.hash, path=image, python=ENV_PYTHON, reused=reused,
                               freeze="", build_seconds=seconds, image=image)
        if config["kind"] == "ssh":
            target, conn = self._connection(config["target"])
            report = self._reports[conn.name]
            env = target._build_env(conn, env_spec, report["version"], say)
            say(f"environment {env.hash} on {conn.name}: {env.how()} ({env.python})")
            return env
        env = resolve_environment(env_spec, self.workspace.env_cache, on_line=say)
        say(f"environment {env.hash}: {env.how()} ({env.python})")
        return env

    def provision(self, name: str, version: int, env: Environment) -> None:
        """The version's spec completed with its interpreter and tfsubmit's runtime; on an
        SSH host, the model and the scoring script's folder copied there and the spec's
        paths made the host's."""
        config = self.config(name)
        folder = self.folder(name)
        spec = self.spec(name, version)
        if config["kind"] == "ssh":
            target, _ = self._connection(config["target"])
            runtime = target.runtime
        else:
            runtime = str(runtime_dir(self.workspace.runtime))
        spec["python"] = env.python
        spec["image"] = env.image
        spec["env"] = {"PYTHONPATH": runtime, "PYTHONUNBUFFERED": "1",
                       "TF_CPP_MIN_LOG_LEVEL": "2"}
        spec["runtime"] = runtime
        write_json(folder / "versions" / f"{version}.json", spec)
        files = self._files(config)
        if config["kind"] == "ssh":
            model_dir = Path(spec["model_dir"])
            there = f"models/{spec['model_name']}/{spec['model_version']}"
            remote_dir = files.put_tree(model_dir, there)
            spec["model_path"] = posixpath.join(
                remote_dir, os.path.relpath(spec["model_path"], model_dir))
            spec["model_dir"] = remote_dir
            if spec.get("cwd"):
                remote_cwd = files.put_tree(Path(spec["cwd"]), f"source/{version}")
                spec["score_script"] = posixpath.join(
                    remote_cwd, os.path.relpath(spec["score_script"], spec["cwd"]))
                spec["cwd"] = remote_cwd
            files.write(f"versions/{version}.json", json.dumps(spec, indent=1).encode())

    def start(self, name: str, version: int, say: Callable[[str], None]) -> None:
        """Start the endpoint's supervisor, or, where it runs, ask it to switch to
        `version`."""
        config = self.config(name)
        folder = self.folder(name)
        files = self._files(config)
        config["current"] = version
        if self._supervisor_alive(config):
            write_json(folder / "endpoint.json", config)
            files.write("endpoint.json", json.dumps(config, indent=1).encode())
            say(f"updating endpoint {name} to version {version}")
            self._signal(config, signal.SIGHUP)
            return
        config.pop("container", None)
        write_json(folder / "endpoint.json", config)
        files.write("endpoint.json", json.dumps(config, indent=1).encode())
        files.remove("state.json")
        files.remove("supervisor.json")
        spec = self.spec(name, version)
        if config["kind"] == "docker":
            self._start_container(config, spec)
        else:
            from tfsubmit.targets.local import base_env

            pid = files.start(spec["python"], spec["env"],
                              base_env() if config["kind"] == "local" else {})
            files.write("supervisor.json", json.dumps({"pid": pid}).encode())
        say(f"endpoint {name}: supervisor started on {config['target']} ({files.where}), "
            f"port {config['port']}")

    def _start_container(self, config: dict[str, Any], spec: dict[str, Any]) -> None:
        target = self._docker(config)
        folder = self.folder(config["name"])
        mounts = {str(folder): {"bind": str(folder), "mode": "rw"},
                  spec["runtime"]: {"bind": spec["runtime"], "mode": "ro"},
                  str(self.workspace.models): {"bind": str(self.workspace.models),
                                               "mode": "ro"}}
        name = f"tfsubmit-endpoint-{config['name']}"
        try:
            target.client.containers.get(name).remove(force=True)
        except Exception:  # noqa: BLE001 (none there)
            pass
        container = target.client.containers.run(
            spec["image"], command=[ENV_PYTHON, "-m", "tfsubmit.endpoint.supervisor",
                                    str(folder)],
            name=name, detach=True, init=True, environment=spec["env"], volumes=mounts,
            working_dir=str(folder), labels={ENDPOINT_LABEL: config["name"]},
            # The host's network: the supervisor binds the endpoint's port where the engine
            # runs (no bridge or proxy between client and server; engines may run without
            # a default bridge, as tests/dockerd.py's does).
            network_mode="host")
        config["container"] = container.id
        write_json(folder / "endpoint.json", config)

    def _signal(self, config: dict[str, Any], sig: int) -> None:
        if config.get("container"):
            try:
                self._docker(config).client.containers.get(config["container"]).kill(
                    signal=int(sig))
            except Exception:  # noqa: BLE001 (gone)
                pass
            return
        files = self._files(config)
        pid = (_json(files.read("supervisor.json")) or {}).get("pid")
        if pid:
            files.signal(pid, sig)

    def wait_healthy(self, name: str, version: int, *, timeout: float = 900.0,
                     say: Callable[[str], None] = lambda line: None,
                     gave_up: Callable[[], str | None] = lambda: None) -> dict[str, Any]:
        """Until `version` serves (Healthy), following the endpoint's log; EndpointError
        when it failed, naming why and the log's last lines. `gave_up` (asked about once a
        second) says why the deployment ended without it, if it did (its flow run ended)."""
        deadline = time.monotonic() + timeout
        lines = self.follow_log(name)
        next_ask = 0.0
        while True:
            for line in lines:
                if line is None:
                    break
                say(line)
            state = self.state(name)
            if state["state"] == HEALTHY and state.get("version") == version:
                return state
            why = None
            if state["state"] == FAILED or (state.get("update_error")
                                            and f"version {version} " in
                                            state["update_error"]):
                why = f"did not become Healthy: {state.get('update_error') or state['error']}"
            elif time.monotonic() > next_ask:
                next_ask = time.monotonic() + 1.0
                why = gave_up()
                if why:  # it may have served just before its flow run ended
                    state = self.state(name)
                    if state["state"] == HEALTHY and state.get("version") == version:
                        return state
            if why is None and time.monotonic() > deadline:
                why = f"not Healthy after {timeout:g} s ({state['state']})"
            if why:
                raise EndpointError(f"endpoint {name}: version {version} {why}\n"
                                    f"{self.tail(name)}")
            time.sleep(0.1)

    def deployment_failed(self, name: str, version: int, error: str) -> None:
        """A deployment that failed before its supervisor served: the endpoint reads Failed,
        saying why (one that serves an older version keeps serving, and says so)."""
        config = self.config(name)
        files = self._files(config)
        if self._supervisor_alive(config):
            state = _json(files.read("state.json")) or {}
            state["update_error"] = f"version {version} was not deployed: {error}"
        else:
            state = {"state": FAILED, "version": None, "error": error}
        files.write("state.json", json.dumps(state).encode())

    def follow_log(self, name: str) -> Iterator[str | None]:
        """New lines of the deployment's log (deploy.log, here) and of the endpoint's
        (endpoint.log, where it runs) as they come; None when there are none yet."""
        sources = [LocalFiles(self.folder(name)), self._files(self.config(name))]
        names = ["deploy.log", "endpoint.log"]
        offsets = [len(files.read(log) or b"") for files, log in zip(sources, names,
                                                                       strict=True)]
        while True:
            for i, (files, log) in enumerate(zip(sources, names, strict=True)):
                data = files.read(log, offsets[i]) or b""
                end = data.rfind(b"\n") + 1
                offsets[i] += end
                yield from data[:end].decode("utf-8", "replace").splitlines()
            yield None

    def tail(self, name: str, lines: int = 20) -> str:
        deploy = LocalFiles(self.folder(name)).read("deploy.log") or b""
        data = self._files(self.config(name)).read("endpoint.log") or b""
        text = (deploy + data).decode("utf-8", "replace").splitlines()
        return "\n".join(text[-lines:])

    # -- deleting ----------------------------------------------------------------------------

    def delete(self, name: str, *, timeout: float = 60.0) -> Path:
        """Stop the endpoint (its supervisor stops its servers) and remove it; its log is
        kept here, and its path returned."""
        config = self.config(name)
        folder = self.folder(name)
        files = self._files(config)
        self._signal(config, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self._supervisor_alive(config) and time.monotonic() < deadline:
            time.sleep(0.1)
        if config.get("container"):
            try:
                self._docker(config).client.containers.get(config["container"]).remove(
                    force=True)
            except Exception:  # noqa: BLE001 (gone already)
                pass
        elif self._supervisor_alive(config):
            self._signal(config, signal.SIGKILL)
        if not config.get("container"):  # a supervisor killed before it could stop them
            for pid in (_json(files.read("state.json")) or {}).get("children") or []:
                files.signal(pid, signal.SIGKILL, SERVER)
        kept = self.root / ".deleted" / f"{name}-{time.strftime('%Y%m%d_%H%M%S')}.log"
        kept.parent.mkdir(parents=True, exist_ok=True)
        kept.write_bytes((LocalFiles(folder).read("deploy.log") or b"")
                         + (files.read("endpoint.log") or b""))
        files.remove_all()
        shutil.rmtree(folder, ignore_errors=True)
        return kept


def _json(data: bytes | None) -> dict[str, Any] | None:
    try:
        return json.loads(data) if data else None
    except ValueError:
        return None


def _check_port_free(port: int) -> None:
    try:  # as the supervisor will bind it (SO_REUSEADDR: closed connections do not count)
        socket.create_server(("127.0.0.1", port)).close()
    except OSError:
        raise JobSpecError(f"port {port} is in use on this machine; choose another "
                           "(or leave it out for a free one)") from None
