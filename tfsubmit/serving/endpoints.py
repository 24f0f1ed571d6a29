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
import os
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

from tfsubmit.errors import EndpointError, JobSpecError, NotSupportedError, TfsubmitError
from tfsubmit.spec.environment import Environment, EnvironmentSpec, local_content
from tfsubmit.store.layout import Workspace, read_json, write_json
from tfsubmit.store.package import runtime_dir
from tfsubmit.store.registry import ModelRegistry, parse_reference
from tfsubmit.system.processes import pid_alive
from tfsubmit.targets.config import get_target
from tfsubmit.targets.docker import DockerTarget
from tfsubmit.targets.envbuild import resolve_environment
from tfsubmit.targets.images import ENV_PYTHON, bootstrap_base, resolve_image
from tfsubmit.targets.local import LocalTarget

# What the endpoint's server needs beside the model's own packages: a maintained ASGI stack.
SERVING_PACKAGES = ("starlette>=0.40", "uvicorn>=0.30")
_NAME = re.compile(r"[a-z][a-z0-9-]{1,30}[a-z0-9]")  # Azure's rule for service names
ENDPOINT_LABEL = "tfsubmit.endpoint"
HEALTHY, UNHEALTHY, FAILED, TRANSITIONING = "Healthy", "Unhealthy", "Failed", "Transitioning"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


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
        folder = self.folder(name)
        state = read_json(folder / "state.json") or {"state": TRANSITIONING}
        started = config.get("container") or (folder / "supervisor.json").exists()
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
        folder = self.folder(config["name"])
        if config.get("container"):
            try:
                return self._docker(config).client.containers.get(
                    config["container"]).status in ("created", "running")
            except Exception:  # noqa: BLE001 (gone, or the engine is)
                return False
        pid = (read_json(folder / "supervisor.json") or {}).get("pid")
        return bool(pid) and pid_alive(pid) and _is_supervisor(pid, folder)

    def _docker(self, config: dict[str, Any]) -> DockerTarget:
        target = get_target(config["target"], self.workspace.root)
        assert isinstance(target, DockerTarget)
        return target

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
        script = None
        if score_script:
            base = Path(source_directory or ".").resolve()
            script = (base / score_script).resolve()
            check_scoring_script(script)
            if not script.is_relative_to(base):
                raise JobSpecError(f"entry_script {score_script!r} is outside "
                                   f"source_directory {str(base)!r}")
        kind = self._target_kind(target)
        if running and existing["target"] != target:
            raise EndpointError(f"endpoint {name!r} runs on target {existing['target']!r}; "
                                f"delete it to deploy on {target!r}")
        if port is not None and not 0 < int(port) < 65536:
            raise JobSpecError(f"port {port}: give a port from 1 to 65535")
        if running:
            port = existing["port"]
        elif port is not None:
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
            shutil.copytree(script.parent if not source_directory
                            else Path(source_directory).resolve(), source,
                            ignore=shutil.ignore_patterns("__pycache__", ".git"))
        old_keys = (self.spec(name, existing["current"]).get("keys") if existing else None)
        keys = (old_keys or [secrets.token_urlsafe(24), secrets.token_urlsafe(24)]) \
            if auth else []
        job = info.get("job") or {}
        spec = {
            "endpoint": name, "version": version, "model_name": info["name"],
            "model_version": info["version"],
            "model_dir": str(registry.model_dir(info)),
            "model_path": str(registry.model_path(info)),
            "score_script": str(source / script.relative_to(
                script.parent if not source_directory else Path(source_directory).resolve()))
            if source else None,
            "cwd": str(source) if source else None,
            "framework_version": job.get("framework_version"),
            "use_gpu": bool(job.get("use_gpu")),
            "pip_packages": [*job.get("pip_packages", []), *pip_packages],
            "keys": keys,
        }
        write_json(folder / "versions" / f"{version}.json", spec)
        if not existing or (overwrite and not running):
            write_json(folder / "endpoint.json", {
                "name": name, "target": target, "kind": kind, "port": int(port),
                "host": "127.0.0.1",
                "address": "127.0.0.1", "current": version, "created": time.time(),
                "liveness_seconds": 5})
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
        raise NotSupportedError(f"target {target!r}: endpoints run on the local target and "
                                "on docker targets in this version (SSH and Slurm targets "
                                "train only)")

    # -- the deploy-model flow's steps ------------------------------------------------------

    def environment(self, name: str, version: int, say: Callable[[str], None]) -> Environment:
        """The inference environment: TensorFlow as the model was trained with, its pip
        packages, and the server's; built once and cached like training environments."""
        config, spec = self.config(name), self.spec(name, version)
        framework = spec.get("framework_version") or _default_framework()
        package = "tensorflow" if spec.get("use_gpu") else "tensorflow-cpu"
        tf_req = f"{package}=={framework}.*" if framework.count(".") == 1 \
            else f"{package}=={framework}"
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
        env = resolve_environment(env_spec, self.workspace.env_cache, on_line=say)
        say(f"environment {env.hash}: {env.how()} ({env.python})")
        return env

    def provision(self, name: str, version: int, env: Environment) -> None:
        """The version's spec completed with its interpreter and tfsubmit's runtime."""
        folder = self.folder(name)
        spec = self.spec(name, version)
        runtime = runtime_dir(self.workspace.runtime)
        spec["python"] = env.python
        spec["image"] = env.image
        spec["env"] = {"PYTHONPATH": str(runtime), "PYTHONUNBUFFERED": "1",
                       "TF_CPP_MIN_LOG_LEVEL": "2"}
        spec["runtime"] = str(runtime)
        write_json(folder / "versions" / f"{version}.json", spec)

    def start(self, name: str, version: int, say: Callable[[str], None]) -> None:
        """Start the endpoint's supervisor, or, where it runs, ask it to switch to
        `version`."""
        config = self.config(name)
        folder = self.folder(name)
        if self._supervisor_alive(config):
            config["current"] = version
            write_json(folder / "endpoint.json", config)
            say(f"updating endpoint {name} to version {version}")
            self._signal(config, signal.SIGHUP)
            return
        config["current"] = version
        config.pop("container", None)
        write_json(folder / "endpoint.json", config)
        (folder / "state.json").unlink(missing_ok=True)
        (folder / "supervisor.json").unlink(missing_ok=True)
        spec = self.spec(name, version)
        if config["kind"] == "docker":
            self._start_container(config, spec)
        else:
            from tfsubmit.targets.local import base_env

            log = (folder / "endpoint.log").open("a")
            with log:
                import subprocess

                popen = subprocess.Popen([spec["python"], "-m",
                                          "tfsubmit.endpoint.supervisor", str(folder)],
                                         env={**base_env(), **spec["env"]}, cwd=str(folder),
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
            write_json(folder / "supervisor.json", {"pid": popen.pid})
        say(f"endpoint {name}: supervisor started on {config['target']}, port "
            f"{config['port']}")

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
        pid = (read_json(self.folder(config["name"]) / "supervisor.json") or {}).get("pid")
        if pid and _is_supervisor(pid, self.folder(config["name"])):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def wait_healthy(self, name: str, version: int, *, timeout: float = 900.0,
                     say: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
        """Until `version` serves (Healthy), following the endpoint's log; EndpointError
        when it failed, naming why and the log's last lines."""
        deadline = time.monotonic() + timeout
        lines = self.follow_log(name)
        while True:
            for line in lines:
                if line is None:
                    break
                say(line)
            state = self.state(name)
            if state["state"] == HEALTHY and state.get("version") == version:
                return state
            if state["state"] == FAILED or (state.get("update_error")
                                            and f"version {version} " in
                                            state["update_error"]):
                raise EndpointError(f"endpoint {name}: version {version} did not become "
                                    f"Healthy: {state.get('update_error') or state['error']}"
                                    f"\n{self.tail(name)}")
            if time.monotonic() > deadline:
                raise EndpointError(f"endpoint {name}: version {version} not Healthy after "
                                    f"{timeout:g} s ({state['state']})\n{self.tail(name)}")
            time.sleep(0.1)

    def follow_log(self, name: str) -> Iterator[str | None]:
        """The log's new lines as they come; None when there are none yet."""
        path = self.folder(name) / "endpoint.log"
        offset = path.stat().st_size if path.exists() else 0
        while True:
            if path.exists():
                with path.open("rb") as handle:
                    handle.seek(offset)
                    data = handle.read()
                end = data.rfind(b"\n") + 1
                offset += end
                yield from data[:end].decode("utf-8", "replace").splitlines()
            yield None

    def tail(self, name: str, lines: int = 20) -> str:
        path = self.folder(name) / "endpoint.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    # -- deleting ----------------------------------------------------------------------------

    def delete(self, name: str, *, timeout: float = 60.0) -> Path:
        """Stop the endpoint (its supervisor stops its servers) and remove it; its log is
        kept, and its path returned."""
        config = self.config(name)
        folder = self.folder(name)
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
            pid = (read_json(folder / "supervisor.json") or {}).get("pid")
            if pid:
                os.kill(pid, signal.SIGKILL)
        kept = self.root / ".deleted" / f"{name}-{time.strftime('%Y%m%d_%H%M%S')}.log"
        kept.parent.mkdir(parents=True, exist_ok=True)
        if (folder / "endpoint.log").exists():
            shutil.copyfile(folder / "endpoint.log", kept)
        shutil.rmtree(folder, ignore_errors=True)
        return kept


def _is_supervisor(pid: int, folder: Path) -> bool:
    """Whether process `pid` is the supervisor of `folder` (not a reused pid)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"tfsubmit.endpoint.supervisor" in argv and str(folder).encode() in argv


def _check_port_free(port: int) -> None:
    try:  # as the supervisor will bind it (SO_REUSEADDR: closed connections do not count)
        socket.create_server(("127.0.0.1", port)).close()
    except OSError:
        raise JobSpecError(f"port {port} is in use on this machine; choose another "
                           "(or leave it out for a free one)") from None


def _default_framework() -> str:
    from tfsubmit.spec.job import TrainingJob

    return TrainingJob.model_fields["framework_version"].default


def describe(state: dict[str, Any]) -> str:
    return (f"{state['name']}: {state['state']} {state['model']} on {state['target']} "
            f"{state['scoring_uri']}")


__all__ = ["Endpoints", "describe", "TfsubmitError"]
