"""The SSH target against real sshd test hosts on this machine (loopback and namespaces)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from conftest import EXAMPLE, run_cli, wait_for_line
from sshhosts import NamespaceHosts

from tfsubmit import Experiment, TensorFlow
from tfsubmit.errors import TargetError
from tfsubmit.pipeline.supervise import supervise
from tfsubmit.spec.environment import EnvironmentSpec
from tfsubmit.spec.process import ProcessSpec
from tfsubmit.store.runlog import RunLog
from tfsubmit.system.processes import processes_of_run
from tfsubmit.targets.config import SSHTargetConfig, get_target, save_target
from tfsubmit.targets.ssh import SSHTarget


def add_target(workspace, hosts, name: str | None = None, **extra) -> str:
    name = name or f"t-{uuid.uuid4().hex[:8]}"
    save_target(workspace.root, name, SSHTargetConfig(**hosts.target_config(**extra)))
    return name


def test_example_trains_on_a_remote_host_through_the_api(workspace, hosts, tmp_path):
    target = add_target(workspace, hosts, workdir=str(tmp_path / "remote"))
    job = TensorFlow(source_directory=str(EXAMPLE), entry_script="train.py",
                     script_params={"--epochs": 2, "--samples": 512}, compute_target=target)
    run = Experiment("ssh-api", workspace=workspace.root).submit(job)
    details = run.wait_for_completion(timeout=900)
    assert details["hosts"] == ["127.0.0.2", "127.0.0.3"]
    assert details["uploaded_bytes"] > 0
    log = run.paths.output_log.read_text()
    assert "[worker:0@127.0.0.2] Epoch 2/2" in log
    assert "host 127.0.0.3: ok (python" in log
    metrics = run.get_metrics()
    assert metrics["epoch"] == [1.0, 2.0] and len(metrics["loss"]) == 2
    assert (run.paths.outputs / "model.keras").is_file()
    assert (run.paths.logs / "worker-0.log").is_file()

    again = Experiment("ssh-api", workspace=workspace.root).submit(job)
    details = again.wait_for_completion(timeout=300)
    assert details["uploaded_bytes"] == 0  # same tree, same runtime: nothing sent
    assert "uploaded 0 bytes" in again.paths.output_log.read_text()


def test_cli_submits_to_a_named_target(workspace, hosts, tmp_path):
    target = add_target(workspace, hosts)
    job_file = tmp_path / "job.yaml"
    job_file.write_text(f"source_directory: {EXAMPLE}\nentry_script: train.py\n"
                        f"script_params: {{--epochs: 2, --samples: 256}}\n"
                        f"compute_target: {target}\n")
    result = run_cli("submit", str(job_file), "--experiment", "ssh-cli", timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[worker:0@127.0.0.2] Epoch 2/2" in result.stdout
    assert "  loss: [" in result.stdout


def test_shell_metacharacters_reach_the_script_literally(workspace, hosts, job_dir, tmp_path):
    marker = tmp_path / "pwned"
    job = TensorFlow(source_directory=str(job_dir), entry_script="echo_args.py",
                     compute_target=add_target(workspace, hosts),
                     script_params={"--name": f"; touch {marker}", "--q": "$(id) `id` 'x\""},
                     environment_variables={"MY_SETTING": "a b; c"})
    run = Experiment("ssh-quote", workspace=workspace.root).submit(job)
    run.wait_for_completion(timeout=300)
    seen = json.loads((run.paths.outputs / "seen.json").read_text())
    assert seen == {"argv": ["--name", f"; touch {marker}", "--q", "$(id) `id` 'x\""],
                    "MY_SETTING": "a b; c"}
    assert not marker.exists()


def test_cancel_leaves_no_process_on_any_host(workspace, hosts, job_dir):
    target_name = add_target(workspace, hosts)
    job = TensorFlow(source_directory=str(job_dir), entry_script="sleeper.py",
                     compute_target=target_name)
    run = Experiment("ssh-cancel", workspace=workspace.root).submit(job)
    wait_for_line(run, "ready: sleeping")
    target = get_target(target_name, workspace.root)
    target.connect()
    try:
        assert len(target.processes(run.id).get("127.0.0.2", [])) == 3
        run.cancel()
        assert run.get_status() == "Canceled"
        assert target.processes(run.id) == {}  # `ps` on every host shows nothing of the run
    finally:
        target.close()


def test_a_host_with_this_runtime_is_checked_in_one_command(hosts, tmp_path):
    """The warm path: once a host has this version of tfsubmit's runtime, the pre-flight
    recognises it (nothing is uploaded again, and no second pre-flight runs)."""
    config = SSHTargetConfig(**hosts.target_config(workdir=str(tmp_path / "wd")))
    for attempt in ("cold", "warm"):
        target = SSHTarget(f"runtime-{attempt}", config)
        try:
            reports = target.connect()
            assert {r["runtime"] for r in reports.values()} == {target.runtime}
            if attempt == "warm":
                assert target.bytes_uploaded == 0
        finally:
            target.close()


def test_abandoned_runtime_uploads_are_removed_by_a_later_pre_flight(hosts, tmp_path):
    """A runtime upload cut off midway (`<hash>.part-*`) or a runtime set aside but not
    removed (`.old-*`) goes once untouched for an hour; a fresh one (another host's upload
    under way) and the runtimes themselves stay."""
    config = SSHTargetConfig(**hosts.target_config(workdir=str(tmp_path / "wd")))
    runtimes = tmp_path / "wd" / "runtime"
    stale = [runtimes / "0123456789abcdef.part-1a2b3c4d", runtimes / "fedcba9876543210.old-9f8e"]
    fresh = runtimes / "0123456789abcdef.part-5e6f7a8b"
    for folder in (*stale, fresh):
        (folder / "tfsubmit").mkdir(parents=True)
        (folder / "tfsubmit" / "__init__.py").write_text("")
    hour_ago = time.time() - 3700
    for folder in stale:
        os.utime(folder, (hour_ago, hour_ago))
    target = SSHTarget("sweeper", config)
    try:
        reports = target.connect()
        removed = {name for report in reports.values() for name in report["removed"]}
        assert removed == {folder.name for folder in stale}  # (the hosts share this workdir)
    finally:
        target.close()
    assert sorted(p.name for p in runtimes.iterdir()) == sorted(
        [fresh.name, Path(target.runtime).name])


def test_every_failing_host_is_reported_at_once(workspace, hosts, tmp_path):
    config = SSHTargetConfig(**{**hosts.target_config(),
                                "hosts": [{"address": "127.0.0.2"}, {"address": "127.0.0.9"},
                                          {"address": "127.0.0.10"}],
                                "connect_timeout": 3})
    started = time.monotonic()
    with pytest.raises(TargetError) as info:
        SSHTarget("partly-down", config).connect()
    message = str(info.value)
    assert time.monotonic() - started < 10
    assert "2 of 3 host(s) failed" in message
    assert "root@127.0.0.9:2222: unreachable" in message
    assert "root@127.0.0.10:2222: unreachable" in message
    assert "127.0.0.2" not in message


def test_wrong_key_is_an_auth_error_naming_the_host(hosts, tmp_path):
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    config = SSHTargetConfig(**hosts.target_config(key_file=str(other)))
    with pytest.raises(TargetError, match=r"root@127\.0\.0\.2:2222: authentication failed"):
        SSHTarget("wrong-key", config).connect()


def test_unknown_host_key_is_refused_unless_trusted_on_first_use(hosts, tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text("")
    config = SSHTargetConfig(**hosts.target_config(known_hosts=str(known)))
    with pytest.raises(TargetError, match=r"unknown host key, refused; trust it with `ssh-keyscan"):
        SSHTarget("strict", config).connect()
    assert known.read_text() == ""

    tofu = SSHTarget("tofu", config.model_copy(update={"trust_on_first_use": True}))
    tofu.connect()
    tofu.close()
    recorded = known.read_text()
    assert "[127.0.0.2]:2222 ssh-ed25519" in recorded and "[127.0.0.3]:2222" in recorded
    SSHTarget("strict-again", config).connect()  # now known: accepted without the option


def test_changed_host_key_is_refused(hosts, tmp_path):
    forged = tmp_path / "forged"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(forged)], check=True)
    known = tmp_path / "known_hosts"
    kind, key = forged.with_suffix(".pub").read_text().split()[:2]
    known.write_text(f"[127.0.0.2]:2222 {kind} {key}\n[127.0.0.3]:2222 {kind} {key}\n")
    config = SSHTargetConfig(**hosts.target_config(known_hosts=str(known),
                                                   trust_on_first_use=True))
    with pytest.raises(TargetError, match="host key CHANGED"):
        SSHTarget("changed", config).connect()


def _netns_available() -> bool:
    if not shutil.which("ip"):
        return False
    probe = subprocess.run(["ip", "netns", "add", "tfs-probe"], capture_output=True)
    subprocess.run(["ip", "netns", "del", "tfs-probe"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _netns_available(), reason="network namespaces need CAP_NET_ADMIN")
def test_host_cut_off_mid_run_fails_fast_and_stops_the_others(tmp_path):
    hosts = NamespaceHosts(tmp_path / "nshosts", 2).start()
    run_id = f"cut-{uuid.uuid4().hex[:6]}"
    config = SSHTargetConfig(**hosts.target_config(connect_timeout=3, heartbeat_seconds=1))
    target = SSHTarget("ns", config)
    try:
        target.connect()
        workdir = str(tmp_path / "job")
        Path(workdir, ".tfsubmit").mkdir(parents=True)
        for conn in target.connections.values():
            conn.start_heartbeat()
        code = "import time; print('up', flush=True); time.sleep(300)"
        specs = [ProcessSpec(host=address, argv=(sys.executable, "-c", code),
                             env={"TFSUBMIT_RUN_ID": run_id}, cwd=workdir, role="worker",
                             index=i) for i, address in enumerate(hosts.addresses)]
        log = RunLog(tmp_path / "output.log")
        cut_at = []

        def cut_when_running() -> None:
            while (tmp_path / "output.log").read_text().count(" up") < 2:
                time.sleep(0.1)
            hosts.cut(1)
            cut_at.append(time.monotonic())

        threading.Thread(target=cut_when_running, daemon=True).start()
        outcome = supervise(target, specs, run_id=run_id, log=log, log_dir=tmp_path / "logs",
                            cancel=threading.Event(), grace_seconds=3)
        failed_after = time.monotonic() - cut_at[0]
        assert outcome.status == "Failed"
        assert f"host root@{hosts.addresses[1]}:2222 lost" in outcome.reason
        assert failed_after < 15
        # The process on the healthy host was stopped; the cut-off one is out of reach.
        assert target.processes(run_id) == {}
        assert outcome.results[0].exit_code is not None
        # Connecting to the cut-off host now times out, within the connect timeout.
        started = time.monotonic()
        with pytest.raises(TargetError, match=rf"root@{hosts.addresses[1]}:2222: unreachable "
                                              r"\(timed out, connect_timeout=3 s\)"):
            SSHTarget("ns-again", config).connect()
        assert time.monotonic() - started < 6
    finally:
        target.close()
        for pid in processes_of_run(run_id):  # same machine: clean up what the cut left
            subprocess.run(["kill", "-9", str(pid)])
        hosts.stop()


def test_target_saved_as_a_prefect_block(workspace, hosts, job_dir):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tfsubmit.service.server import server_status
    from tfsubmit.tasks.blocks import SSHTargetBlock

    name = f"block-{uuid.uuid4().hex[:8]}"
    with temporary_settings({PREFECT_API_URL: server_status(workspace).api_url}):
        SSHTargetBlock(target=SSHTargetConfig(**hosts.target_config())).save(name)
    job = TensorFlow(source_directory=str(job_dir), entry_script="echo_args.py",
                     script_params={"--from": "block"}, compute_target=name)
    run = Experiment("ssh-block", workspace=workspace.root).submit(job)
    details = run.wait_for_completion(timeout=300)
    assert details["hosts"] == ["127.0.0.2", "127.0.0.3"]
    assert json.loads((run.paths.outputs / "seen.json").read_text())["argv"] == ["--from", "block"]


@pytest.mark.skipif(not _netns_available(), reason="network namespaces need CAP_NET_ADMIN")
def test_run_fails_fast_naming_the_host_cut_off_mid_run(workspace, job_dir, tmp_path):
    hosts = NamespaceHosts(tmp_path / "nshosts", 2).start()
    run = None
    try:
        target = add_target(workspace, hosts, connect_timeout=3, heartbeat_seconds=1)
        job = TensorFlow(source_directory=str(job_dir), entry_script="sleeper.py",
                         compute_target=target)
        run = Experiment("ssh-cut", workspace=workspace.root).submit(job)
        wait_for_line(run, "ready: sleeping")
        hosts.cut(0)
        cut_at = time.monotonic()
        while run.get_status() not in ("Completed", "Failed", "Canceled"):
            assert time.monotonic() - cut_at < 30, "the run did not notice the lost host"
            time.sleep(0.2)
        details = run.get_details()
        assert details["status"] == "Failed"
        assert f"host root@{hosts.addresses[0]}:2222 lost" in details["reason"]
        assert time.monotonic() - cut_at < 15
        assert "unreachable, its outputs stay on the host" in run.paths.output_log.read_text()
    finally:
        if run is not None:  # same machine: end what the cut-off host could not be told to
            for pid in processes_of_run(run.id):
                subprocess.run(["kill", "-9", str(pid)])
        hosts.stop()


def test_host_without_uv_builds_with_venv_and_pip_then_reuses(hosts, tmp_path):
    base_python = str(Path(sys.base_prefix) / "bin" / "python3")
    probe = subprocess.run([base_python, "-c", "import uv"], capture_output=True)
    if probe.returncode == 0:
        pytest.skip("the base Python has uv; the pip path needs one without it")
    config = SSHTargetConfig(**hosts.target_config(
        python=base_python, env_cache=str(tmp_path / "envs"), workdir=str(tmp_path / "wd"),
        hosts=[{"address": hosts.addresses[0]}]))
    target = SSHTarget("no-uv", config)
    try:
        version = target.connect()[hosts.addresses[0]]["version"]
        conn = target.connections[hosts.addresses[0]]
        spec = EnvironmentSpec(version, ("six",))
        lines: list[str] = []
        built = target._build_env(conn, spec, version, lines.append)
        assert not built.reused and built.python.startswith(str(tmp_path / "envs"))
        assert "six==" in built.freeze
        assert any("Successfully installed" in line and "six" in line for line in lines)
        again = target._build_env(conn, spec, version, lines.append)
        assert again.reused and again.python == built.python
    finally:
        target.close()
