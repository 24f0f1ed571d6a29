"""The docker target against a real dockerd: images built offline, jobs as containers.

The engine is started by the `docker_engine` fixture (tests/dockerd.py); its images persist
in ~/.cache/tfsubmit/dockerd, so the base image and the TensorFlow image are built once per
machine. Nothing is ever pulled.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import pytest
import yaml
from conftest import EXAMPLE, ROOT, run_cli, wait_for_line

from tfsubmit import Experiment, TensorFlow
from tfsubmit.errors import RunFailedError, TargetError
from tfsubmit.spec.environment import environment_spec
from tfsubmit.store.record import TERMINAL_STATUSES
from tfsubmit.targets.config import DockerTargetConfig, load_targets, save_target

pytestmark = pytest.mark.e2e
PS_EXAMPLE = ROOT / "examples" / "ps-synthetic"


def of_run(client, run_id: str, **filters) -> list:
    # ignore_removed: one removed between the listing and its inspection is simply gone.
    return client.containers.list(all=True, filters={"label": f"tfsubmit.run={run_id}",
                                                     **filters}, ignore_removed=True)


def networks_of(client, run_id: str) -> list:
    return client.networks.list(filters={"label": f"tfsubmit.run={run_id}"})


def example(target: str) -> TensorFlow:
    """The Keras example, small, on a docker target."""
    return TensorFlow(source_directory=str(EXAMPLE), entry_script="train.py",
                      script_params={"--epochs": 2, "--samples": 500}, compute_target=target)


def containers_while_running(client, run) -> Iterator[list]:
    """The run's live containers, every 0.2 s until the run ends."""
    while run.get_status() not in TERMINAL_STATUSES:
        yield of_run(client, run.id)
        time.sleep(0.2)


def test_tensorflow_in_a_container_through_the_api_then_the_cli(workspace, docker_engine,
                                                               tmp_path):
    job = example("docker-test")
    run = Experiment("docker-api").submit(job)
    details = run.wait_for_completion(timeout=1200)
    log = run.paths.output_log.read_text()
    assert "[worker:0@docker-test] Epoch 2/2" in log
    assert details["image"].startswith("tfsubmit-env:")
    metrics = run.get_metrics()
    assert len(metrics["val_loss"]) == 2 and metrics["epoch"] == [1.0, 2.0]
    assert (run.paths.outputs / "model.keras").stat().st_size > 0
    assert re.search(r"tensorflow[-_]cpu==2\.21\.0", run.paths.freeze.read_text())
    image = docker_engine.images.get(details["image"])
    assert image.labels["tfsubmit"] == "env"
    assert of_run(docker_engine, run.id) == [] and networks_of(docker_engine, run.id) == []

    # The same spec from the CLI: the image is found by its tag, nothing is built.
    spec = {"experiment": "docker-cli", "source_directory": str(EXAMPLE),
            "entry_script": "train.py", "script_params": {"--epochs": 2, "--samples": 500},
            "compute_target": "docker-test"}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    result = run_cli("submit", str(tmp_path / "job.yaml"), timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"image {details['image']}: reused" in result.stdout
    assert "[tfsubmit:image]" not in result.stdout  # no build step ran
    assert "  val_loss: [" in result.stdout

    # Another pip package: a new image, but only its own layer is built on the framework's.
    # (Its image is removed first: the engine's images outlive test sessions.)
    with_tabulate = job.model_copy(update={"pip_packages": ["tabulate"]})
    for old in docker_engine.images.list(filters={"label": [
            "tfsubmit=env", f"tfsubmit.env={environment_spec(with_tabulate).hash}"]}):
        docker_engine.images.remove(old.id, force=True)
    extra = Experiment("docker-api").submit(with_tabulate)
    extra.wait_for_completion(timeout=900)
    log = extra.paths.output_log.read_text()
    assert re.search(r"framework image tfsubmit-tf:\w+: reused", log), log
    assert "tabulate==" in extra.paths.freeze.read_text()
    assert extra.get_details()["image"] != details["image"]


def test_exit_code_3_keeps_logs_and_cancel_removes_the_container(workspace, docker_engine,
                                                                 job_dir):
    experiment = Experiment("docker-faults")
    failing = experiment.submit(TensorFlow(source_directory=str(job_dir), entry_script="fail.py",
                                           compute_target="docker-test"))
    with pytest.raises(RunFailedError):
        failing.wait_for_completion(timeout=900)
    details = failing.get_details()
    assert details["status"] == "Failed" and details["exit_code"] == 3
    assert "about to fail with exit code 3" in failing.paths.output_log.read_text()
    assert (failing.paths.outputs / "partial.txt").exists()
    assert failing.get_metrics()["loss"] == 1.5
    assert of_run(docker_engine, failing.id) == []

    sleeping = experiment.submit(TensorFlow(source_directory=str(job_dir),
                                            entry_script="sleeper.py",
                                            compute_target="docker-test"))
    wait_for_line(sleeping, "ready: sleeping", timeout=600)
    assert len(of_run(docker_engine, sleeping.id, status="running")) == 1
    sleeping.cancel()
    assert sleeping.get_status() == "Canceled"
    assert of_run(docker_engine, sleeping.id) == []  # stopped and removed
    assert networks_of(docker_engine, sleeping.id) == []


def test_a_container_removed_outside_tfsubmit_is_named_first(workspace, docker_engine,
                                                              job_dir):
    """Issue 28: the root cause leads the reason, then the first task it broke."""
    run = Experiment("docker-removed").submit(TensorFlow(
        source_directory=str(job_dir), entry_script="sleeper.py", compute_target="docker-test"))
    wait_for_line(run, "ready: sleeping", timeout=600)
    (container,) = of_run(docker_engine, run.id, status="running")
    container.remove(force=True)
    details = run.wait_for_completion(timeout=300, raise_on_error=False)
    assert details["status"] == "Failed"
    assert details["reason"].startswith(f"the container {container.name} was removed outside "
                                        "tfsubmit (docker rm); the first task it broke: "
                                        "worker:0@docker-test"), details["reason"]
    assert of_run(docker_engine, run.id) == []


def test_ps_topology_of_four_containers(workspace, docker_engine):
    job = TensorFlow(source_directory=str(PS_EXAMPLE), entry_script="train.py",
                     script_params={"--epochs": 2, "--steps-per-epoch": 12},
                     distributed_backend="ps", worker_count=2, parameter_server_count=1,
                     chief=True, compute_target="docker-test")
    run = Experiment("docker-ps").submit(job)
    seen: dict[str, str] = {}
    tf_configs = []
    for containers in containers_while_running(docker_engine, run):
        for container in containers:
            if container.name not in seen:
                seen[container.name] = container.labels["tfsubmit.role"]
                env = dict(e.split("=", 1) for e in container.attrs["Config"]["Env"])
                tf_configs.append(json.loads(env["TF_CONFIG"]))
    details = run.wait_for_completion()
    assert sorted(seen.values()) == ["chief", "ps", "worker", "worker"]
    log = run.paths.output_log.read_text()
    assert "/job:ps/replica:0/task:0" in log and "chief done" in log
    # The chief finished; the ps (and the workers) were stopped, then every container and
    # the run's network removed.
    assert details["exit_codes"]["chief:0@docker-test"] == 0
    assert details["exit_codes"]["ps:0@docker-test"] != 0
    assert of_run(docker_engine, run.id) == [] and networks_of(docker_engine, run.id) == []
    # Every task found the others by container name on the run's network.
    cluster = tf_configs[0]["cluster"]
    assert cluster["ps"][0].startswith(f"tfsubmit-{run.id}-ps-0:")
    assert all(config["cluster"] == cluster for config in tf_configs)


def test_gpus_asked_of_an_engine_without_them(workspace, docker_engine, job_dir):
    job = TensorFlow(source_directory=str(job_dir), entry_script="echo_args.py",
                     compute_target="docker-test", use_gpu=True)
    run = Experiment("docker-gpu").submit(job)
    with pytest.raises(RunFailedError, match="use_gpu: target 'docker-test' has no GPUs "
                                             "configured"):
        run.wait_for_completion(timeout=120)
    base_url = load_targets(workspace.root)["docker-test"].base_url
    save_target(workspace.root, "docker-gpus", DockerTargetConfig(base_url=base_url, gpus="all"))
    run = Experiment("docker-gpu").submit(job.model_copy(update={"compute_target": "docker-gpus"}))
    with pytest.raises(RunFailedError, match="has no NVIDIA runtime"):
        run.wait_for_completion(timeout=120)


def test_a_custom_image_must_be_on_the_engine(workspace, docker_engine, job_dir):
    job = TensorFlow(source_directory=str(job_dir), entry_script="echo_args.py",
                     compute_target="docker-test", custom_docker_image="example/missing:1")
    run = Experiment("docker-custom").submit(job)
    with pytest.raises(RunFailedError, match="custom_docker_image: 'example/missing:1' is not "
                                             "on the engine"):
        run.wait_for_completion(timeout=120)
    # A target without containers refuses it at submit, before a run exists.
    with pytest.raises(TargetError, match="custom_docker_image: only used with docker"):
        Experiment("docker-custom").submit(job.model_copy(update={"compute_target": "local"}))


@pytest.fixture
def engine_over_ssh(workspace, docker_engine, tmp_path):
    """The same engine, reached as a remote one: ssh://root@127.0.0.9:2222, whose sshd sends
    `docker system dial-stdio` to the test daemon (DOCKER_HOST set for its sessions)."""
    from sshhosts import TestHosts

    socket_url = load_targets(workspace.root)["docker-test"].base_url
    host = TestHosts(tmp_path / "ssh", ["127.0.0.9"], set_env={"DOCKER_HOST": socket_url})
    host.start()
    save_target(workspace.root, "docker-ssh", DockerTargetConfig(
        base_url=f"ssh://root@127.0.0.9:{host.port}", key_file=str(host.user_key),
        known_hosts=str(host.known_hosts)))
    yield host
    host.stop()


def test_a_remote_engine_over_ssh_gets_files_copied_in_and_out(workspace, docker_engine,
                                                                engine_over_ssh):
    run = Experiment("docker-ssh").submit(example("docker-ssh"))
    mounts = {}
    for containers in containers_while_running(docker_engine, run):
        mounts.update({c.name: c.attrs["Mounts"] for c in containers})
    run.wait_for_completion()
    log = run.paths.output_log.read_text()
    assert "[worker:0@docker-ssh] Epoch 2/2" in log
    # No bind mount: the snapshot went in by put_archive, outputs and metrics came back.
    assert list(mounts.values()) == [[]], mounts
    assert (run.paths.outputs / "model.keras").stat().st_size > 0
    assert len(run.get_metrics()["val_loss"]) == 2
    assert of_run(docker_engine, run.id) == [] and networks_of(docker_engine, run.id) == []


def test_a_remote_engine_with_an_unknown_host_key_is_refused(workspace, docker_engine,
                                                            engine_over_ssh, tmp_path, job_dir):
    (tmp_path / "empty_known_hosts").write_text("")
    base = load_targets(workspace.root)["docker-ssh"]
    save_target(workspace.root, "docker-ssh-unknown", base.model_copy(update={
        "known_hosts": str(tmp_path / "empty_known_hosts")}))
    job = TensorFlow(source_directory=str(job_dir), entry_script="echo_args.py",
                     compute_target="docker-ssh-unknown")
    with pytest.raises(TargetError, match=r"ssh://root@127\.0\.0\.9:2222: SSH login failed "
                                          r"\(.*not found in known_hosts"):
        Experiment("docker-ssh").submit(job)  # refused before a run exists
