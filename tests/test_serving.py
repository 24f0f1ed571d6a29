"""Registering and serving trained models (issue 26): a real training run, the registry,
endpoints as deploy-model flow runs of the workspace's real Prefect server, served by real
uvicorn processes under their supervisor, on the local target and on a real dockerd."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import JOBS, run_cli, wait_until

from tfsubmit import Experiment, TensorFlow
from tfsubmit.api.serving import Endpoint, deploy
from tfsubmit.errors import EndpointError, JobSpecError, ModelNotFoundError
from tfsubmit.service.prefect_api import PrefectAPI
from tfsubmit.service.server import server_status
from tfsubmit.serving.endpoints import Endpoints
from tfsubmit.store.registry import ModelRegistry

pytestmark = pytest.mark.e2e
SCORING = JOBS / "scoring"


@pytest.fixture(scope="module")
def trained(workspace):
    """A Completed run of a small Keras model, registered as `toy` (versions 1 and 2)."""
    job = TensorFlow(source_directory=str(JOBS), entry_script="keras_model.py")
    run = Experiment("serving", workspace=workspace.root).submit(job)
    run.wait_for_completion(timeout=900)
    run.register_model("toy", "outputs/model", tags={"stage": "dev"})
    run.register_model("toy", "outputs/model", description="the same, again")
    yield run
    endpoints = Endpoints(workspace)
    for name in endpoints.names():  # nothing of the tests' endpoints left running
        endpoints.delete(name)


def _expected(run) -> dict:
    return json.loads((run.paths.outputs / "expected.json").read_text())


def _post(url: str, body: bytes | str, headers: dict | None = None) -> tuple[int, dict]:
    data = body.encode() if isinstance(body, str) else body
    request = urllib.request.Request(url, data=data, method="POST",
                                     headers={"Content-Type": "application/json",
                                              **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _get(url: str) -> tuple[int, dict]:
    with urllib.request.urlopen(url, timeout=60) as reply:
        return reply.status, json.loads(reply.read())


def _processes_of(folder: Path) -> list[int]:
    """Live processes whose command line names the endpoint's folder."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes()
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if str(folder).encode() in argv and b"tfsubmit.endpoint" in argv \
                    and stat.rsplit(")", 1)[1].split()[0] != "Z":
                found.append(int(entry.name))
    return found


def _close(actual: list, expected: list) -> bool:
    return all(abs(a[0] - e[0]) < 1e-5 for a, e in zip(actual, expected, strict=True))


def test_the_registry_keeps_versions_and_refuses_what_is_not_there(workspace, trained):
    registry = ModelRegistry(workspace)
    first, second = registry.versions("toy")
    assert (first["version"], second["version"]) == (1, 2)
    assert first["run_id"] == trained.id and first["tags"] == {"stage": "dev"}
    assert (registry.model_path(first) / "model.keras").is_file()
    assert first["job"]["framework_version"]  # what serving needs to rebuild TensorFlow
    with pytest.raises(ModelNotFoundError, match="no version 9 .versions: 1, 2"):
        registry.get("toy", 9)
    # (Other tests of the session's workspace register models too.)
    with pytest.raises(ModelNotFoundError, match=r"'nope' is not registered \(registered: .*toy"):
        registry.get("nope")
    from tfsubmit.errors import TfsubmitError

    with pytest.raises(TfsubmitError, match="has no 'outputs/nothing'"):
        trained.register_model("toy", "outputs/nothing")
    listing = run_cli("models", "toy")
    assert listing.returncode == 0 and listing.stdout.count("\ntoy ") == 2, listing.stdout


def test_tf_serving_api_serves_a_model_without_a_scoring_script(workspace, trained):
    """No scoring script: TensorFlow Serving's REST API, from a deploy-model flow run that
    the CLI started; the answers are the model's own (computed in the training run)."""
    done = run_cli("deploy", "toy:1", "--name", "toy-tfs", timeout=900)
    assert done.returncode == 0, done.stderr
    assert "TF Serving:  POST http://127.0.0.1:" in done.stdout
    endpoint = Endpoint("toy-tfs", workspace=workspace.root)
    assert endpoint.state == "Healthy" and endpoint.model == "toy:1"
    base = endpoint.base_uri
    status, info = _get(f"{base}/v1/models/toy")
    assert info["model_version_status"][0]["state"] == "AVAILABLE"
    expected = _expected(trained)
    status, rows = _post(f"{base}/v1/models/toy:predict",
                         json.dumps({"instances": expected["rows"]}))
    assert status == 200 and _close(rows["predictions"], expected["predictions"]), rows
    status, columns = _post(f"{base}/v1/models/toy:predict",
                            json.dumps({"inputs": expected["rows"]}))
    assert status == 200 and _close(columns["outputs"], expected["predictions"])
    status, bad = _post(f"{base}/v1/models/toy:predict", json.dumps({"rows": [1]}))
    assert status == 400 and "instances" in bad["error"]
    # The deployment was a flow run of the deploy-model deployment, and it Completed.
    api = PrefectAPI(server_status(workspace).api_url)
    try:
        runs = api.flow_runs(flow_names=["deploy-model"])
    finally:
        api.close()
    mine = [r for r in runs if r["name"] == "deploy-toy-tfs-v1"]
    assert mine and mine[0]["state"]["type"] == "COMPLETED"
    listing = run_cli("endpoints")
    assert "toy-tfs" in listing.stdout and "Healthy" in listing.stdout
    folder = Endpoints(workspace).folder("toy-tfs")
    # Its supervisor killed outright: the endpoint reads Failed, and delete still leaves
    # nothing (the orphaned server process is found from the state it kept).
    supervisor = json.loads((folder / "supervisor.json").read_text())["pid"]
    os.kill(supervisor, signal.SIGKILL)
    wait_until(lambda: endpoint.state == "Failed", 60, "the endpoint read Failed")
    assert _processes_of(folder)  # its server, orphaned, still serving
    assert run_cli("endpoints", "delete", "toy-tfs").returncode == 0
    assert _processes_of(folder) == [] and not folder.exists()


def test_scoring_script_endpoint_serves_updates_survives_and_deletes(workspace, trained):
    """Azure's contract (init, run, AZUREML_MODEL_DIR) with keys; bad requests answered,
    the process kept; an update under load refuses no request; a killed server process is
    restarted; delete leaves nothing running."""
    endpoint = deploy("toy-score", "toy:1", workspace=workspace.root, score_script="score.py",
                      source_directory=str(SCORING), auth=True, show_output=False)
    expected = _expected(trained)
    answer = endpoint.run({"data": expected["rows"]})
    assert _close(answer["predictions"], expected["predictions"])
    key = endpoint.get_keys()[0]
    # A raw HTTP POST, as any client sends it: the key is required.
    status, reply = _post(endpoint.scoring_uri, json.dumps({"data": expected["rows"]}),
                          {"Authorization": f"Bearer {key}"})
    assert status == 200 and _close(reply["predictions"], expected["predictions"])
    status, reply = _post(endpoint.scoring_uri, json.dumps({"data": expected["rows"]}))
    assert status == 401 and "Authorization: Bearer" in reply["error"]
    auth = {"Authorization": f"Bearer {key}"}
    status, reply = _post(endpoint.scoring_uri, "{not json", auth)
    assert status == 400 and "not JSON" in reply["error"]
    status, reply = _post(endpoint.scoring_uri, json.dumps({"data": [1, 2]}), auth)
    assert status == 500 and "ValueError: expected rows of 4 numbers" in reply["error"]
    assert endpoint.state == "Healthy"  # run() raised; the process serves on
    assert _get(endpoint.swagger_uri)[1]["paths"]["/score"]
    pid_before = endpoint.run({"data": expected["rows"]})["pid"]

    # An update to version 2 while 6 clients send requests: none is refused.
    errors, answered = [], [0]
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                endpoint.run({"data": expected["rows"]})
                answered[0] += 1
            except EndpointError as exc:
                errors.append(str(exc))

    clients = [threading.Thread(target=client) for _ in range(6)]
    for thread in clients:
        thread.start()
    try:
        endpoint.update("toy:2")
        wait_until(lambda: answered[0] > 50, 60, "requests after the update")
    finally:
        stop.set()
        for thread in clients:
            thread.join()
    assert errors == [] and endpoint.model == "toy:2"
    assert endpoint.run({"data": expected["rows"]})["pid"] != pid_before
    assert "retiring version 1" in endpoint.get_logs()

    # A killed server process is restarted by the supervisor.
    details = endpoint.details()
    os.kill(details["child"], signal.SIGKILL)
    wait_until(lambda: endpoint.details().get("child") not in (None, details["child"])
               and endpoint.state == "Healthy", 120, "the restarted server")
    assert endpoint.details()["restarts"] == 1
    assert _close(endpoint.run({"data": expected["rows"]})["predictions"],
                  expected["predictions"])

    folder = Endpoints(workspace).folder("toy-score")
    assert _processes_of(folder)
    port = details["port"]
    endpoint.delete()
    assert _processes_of(folder) == []
    socket.create_server(("127.0.0.1", port)).close()  # the port is free again
    kept = list((folder.parent / ".deleted").glob("toy-score-*.log"))
    assert kept and "score.py: model loaded" in kept[0].read_text()


def test_bad_input_is_refused_before_anything_is_made(workspace, trained, tmp_path):
    endpoints = Endpoints(workspace)
    cases = [
        (["deploy", "nope", "--name", "bad-one"], "'nope' is not registered"),
        (["deploy", "toy:9", "--name", "bad-one"], "no version 9"),
        (["deploy", "toy", "--name", "Bad_Name"], "lower-case letters"),
        (["deploy", "toy", "--name", "bad-one", "--score", "no_run.py", "--source",
          str(SCORING)], "defines no run()"),
        (["deploy", "toy", "--name", "bad-one", "--score", "missing.py", "--source",
          str(SCORING)], "is not a file"),
        (["endpoints", "delete", "never-was"], "no endpoint 'never-was'"),
    ]
    for args, message in cases:
        done = run_cli(*args)
        assert done.returncode == 2 and message in done.stderr, (args, done.stderr)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(JobSpecError, match=f"port {port} is in use"):
            deploy("bad-one", "toy", workspace=workspace.root, port=port)
    assert "bad-one" not in endpoints.names() and not endpoints.folder("bad-one").exists()
    # A deployment whose environment cannot be built: its flow run fails, the endpoint
    # reads Failed saying why, and nothing of it runs.
    with pytest.raises(EndpointError, match="tfsubmit-no-such-package-xyz was not found"):
        deploy("bad-env", "toy", workspace=workspace.root,
               pip_packages=["tfsubmit-no-such-package-xyz==1.0"], show_output=False)
    state = endpoints.state("bad-env")
    assert state["state"] == "Failed" and "tfsubmit-no-such-package-xyz" in state["error"]
    assert _processes_of(endpoints.folder("bad-env")) == []
    endpoints.delete("bad-env")


def test_an_endpoint_on_the_docker_target(workspace, trained, docker_engine):
    """The same model served from a container on a real dockerd: port published on this
    machine, supervised inside; delete removes the container."""
    endpoint = deploy("toy-docker", "toy:2", workspace=workspace.root,
                      score_script="score.py", source_directory=str(SCORING),
                      target="docker-test", show_output=False)
    expected = _expected(trained)
    assert _close(endpoint.run({"data": expected["rows"]})["predictions"],
                  expected["predictions"])
    containers = docker_engine.containers.list(filters={"label": "tfsubmit.endpoint"})
    assert [c.labels["tfsubmit.endpoint"] for c in containers] == ["toy-docker"]
    endpoint.delete()
    assert docker_engine.containers.list(all=True,
                                         filters={"label": "tfsubmit.endpoint"}) == []


def test_an_endpoint_on_an_ssh_host(workspace, trained, hosts, tmp_path):
    """Served from an SSH host: its inference environment built there by the host agent,
    the model and scoring script copied there, the supervisor detached there and bound to
    the host's address; delete leaves nothing there."""
    from test_ssh import add_target

    target = add_target(workspace, hosts, workdir=str(tmp_path / "remote"))
    endpoint = deploy("toy-ssh", "toy:2", workspace=workspace.root, score_script="score.py",
                      source_directory=str(SCORING), target=target, show_output=False)
    assert endpoint.scoring_uri.startswith(f"http://{hosts.addresses[0]}:")
    expected = _expected(trained)
    assert _close(endpoint.run({"data": expected["rows"]})["predictions"],
                  expected["predictions"])
    remote = tmp_path / "remote" / "endpoints" / "toy-ssh"
    assert (remote / "models" / "toy" / "2" / "model" / "model.keras").is_file()
    assert _processes_of(remote)
    endpoint.update("toy:1")
    assert endpoint.model == "toy:1" and "retiring version 1" in endpoint.get_logs()
    endpoint.delete()
    assert _processes_of(remote) == [] and not remote.exists()
