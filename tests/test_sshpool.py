"""tfsubmit's SSH connection pool (targets/sshpool.py) against real sshd test hosts: what a
second submission to the same hosts skips, when kept connections close, and a pool killed
while a job runs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import uuid
from pathlib import Path

import pytest
from conftest import run_cli, wait_until

from tfsubmit.errors import TargetError
from tfsubmit.spec.process import ProcessSpec
from tfsubmit.targets import sshpool
from tfsubmit.targets.config import SSHTargetConfig
from tfsubmit.targets.ssh import HostLostError, SSHTarget


def _config(hosts, tmp_path, **extra) -> SSHTargetConfig:
    """A key file of this test's own: the pool's connections with it are this test's."""
    key = tmp_path / "id_ed25519"
    shutil.copy(hosts.user_key, key)
    return SSHTargetConfig(**hosts.target_config(key_file=str(key),
                                                 workdir=str(tmp_path / "remote"), **extra))


def _kept(config: SSHTargetConfig) -> list[dict]:
    stats = sshpool.call("stats") or {"kept": []}
    return sorted((e for e in stats["kept"] if e["key_file"] == config.key_file),
                  key=lambda e: e["address"])


def _run_true(target: SSHTarget, workdir: str) -> None:
    handles = [target.start(ProcessSpec(host=a, argv=("true",), env={}, cwd=workdir,
                                        role="worker", index=i))
               for i, a in enumerate(target.connections)]
    assert wait_until(lambda: all(h.poll() is not None for h in handles), 60, "`true`")
    assert {h.poll() for h in handles} == {0}


def _job_dir(tmp_path) -> Path:
    """A job's working folder, as the pipeline makes it (with its .tfsubmit folder)."""
    workdir = tmp_path / "job"
    (workdir / ".tfsubmit").mkdir(parents=True)
    return workdir


def _start_sleeper(target: SSHTarget, host: str, workdir, run_id: str | None = None):
    """A task that prints "up" and sleeps 300 s on `host`, started and up (its handle)."""
    handle = target.start(ProcessSpec(
        host=host, argv=("python3", "-c", "import time; print('up', flush=True); "
                         "time.sleep(300)"),
        env={"TFSUBMIT_RUN_ID": run_id} if run_id else {}, cwd=str(workdir), role="worker",
        index=0))
    assert next(iter(handle.lines())) == "up"
    return handle


def test_a_second_submission_reuses_the_first_ones_connections(hosts, tmp_path):
    config = _config(hosts, tmp_path)
    workdir = _job_dir(tmp_path)
    first = SSHTarget("first", config)
    try:
        first.connect()
        _run_true(first, str(workdir))
    finally:
        first.close()
    kept = _kept(config)
    assert [e["address"] for e in kept] == hosts.addresses  # one connection per host, kept
    assert wait_until(lambda: all(e["channels"] == 0 for e in _kept(config)), 60, "channels closed")

    second = SSHTarget("second", config)
    try:
        reports = second.connect()
        assert all(report["ran"] for report in reports.values())
        _run_true(second, str(workdir))
        files = second.connections[hosts.addresses[0]].sftp.listdir(str(tmp_path / "remote"))
        assert "runtime" in files
    finally:
        second.close()
    # The same connections (no new key exchange), made by the first submission.
    assert [e["id"] for e in _kept(config)] == [e["id"] for e in kept]


def test_keep_connections_0_connects_directly(hosts, tmp_path):
    config = _config(hosts, tmp_path, keep_connections=0)
    target = SSHTarget("direct", config)
    try:
        target.connect()
        assert all(not conn.pooled for conn in target.connections.values())
    finally:
        target.close()
    assert _kept(config) == []


def test_an_idle_connection_is_closed_after_keep_connections(hosts, tmp_path):
    config = _config(hosts, tmp_path, keep_connections=1)
    target = SSHTarget("short", config)
    try:
        target.connect()
        ids = [e["id"] for e in _kept(config)]
        assert len(ids) == 2
    finally:
        target.close()
    wait_until(lambda: _kept(config) == [], 60, "the idle connections to close")
    again = SSHTarget("again", config)
    try:
        again.connect()  # connects afresh
        assert not {e["id"] for e in _kept(config)} & set(ids)
    finally:
        again.close()


def test_a_pool_killed_while_a_job_runs_is_a_lost_host_and_the_next_run_gets_a_new_pool(
        hosts, tmp_path):
    config = _config(hosts, tmp_path)
    workdir = _job_dir(tmp_path)
    run_id = f"pool-{uuid.uuid4().hex[:6]}"
    target = SSHTarget("victim", config)
    try:
        target.connect()
        handle = _start_sleeper(target, hosts.addresses[0], workdir, run_id)
        pid = sshpool.call("stats")["pid"]
        os.kill(pid, signal.SIGKILL)

        def lost() -> bool:
            try:
                return handle.poll() is not None and pytest.fail("ended with an exit code")
            except HostLostError as exc:
                assert f"host root@{hosts.addresses[0]}:2222 lost" in str(exc)
                return True

        wait_until(lost, 60, "the lost host to be noticed")
    finally:
        target.close()
    # The next run starts a new pool; nothing of the job keeps running (its host agent ends
    # it when its connection goes; what `ps` still finds, the reaper's way, is killed).
    after = SSHTarget("after", config)
    try:
        after.connect()
        assert sshpool.call("stats")["pid"] != pid

        def ended() -> bool:
            left = after.leftovers(run_id)
            try:
                after.kill(left)
            except TargetError:
                pass  # ended meanwhile
            return not left

        wait_until(ended, 60, "the job to end")
    finally:
        after.close()


def _agent_pids(config: SSHTargetConfig) -> list[list[int]]:
    return [e["agents"] for e in _kept(config)]


def _forked_by(target: SSHTarget, address: str) -> int:
    """The pid of the process that forked the command's parent: on the agent path, the
    resident agent (agentd.py: it forks a relay, which forks the command)."""
    out = target.connections[address].run_python(
        ["-c", "import os; print(open(f'/proc/{os.getppid()}/stat').read()"
               ".rsplit(')', 1)[1].split()[1])"])
    return int(out)


def test_commands_are_forked_by_a_resident_agent_on_each_kept_connection(hosts, tmp_path):
    config = _config(hosts, tmp_path)
    workdir = _job_dir(tmp_path)
    target = SSHTarget("agent", config)
    try:
        target.connect()  # installs the runtime; the agent starts once it is there
        _run_true(target, str(workdir))
        agents = _agent_pids(config)
        assert [len(pids) for pids in agents] == [1, 1], agents
        for address, pids in zip(hosts.addresses, agents, strict=True):
            assert _forked_by(target, address) == pids[0]
            assert "serve" in open(f"/proc/{pids[0]}/cmdline").read()  # hosts are local
        assert target.leftovers("no-such-run") == []  # `ps` through the agent

        # A resident agent killed: the next command runs in a session of its own (or by a
        # new agent), and a later one is forked by a new agent.
        os.kill(agents[0][0], signal.SIGKILL)
        address = hosts.addresses[0]
        assert target.connections[address].run_python(["-c", "print('still')"]) == "still\n"

        def new_agent() -> bool:
            forked_by = _forked_by(target, address)
            return forked_by != agents[0][0] and [forked_by] == _agent_pids(config)[0]

        assert wait_until(new_agent, 60, "a new resident agent")
        _run_true(target, str(workdir))
    finally:
        target.close()
    # The next submission's pre-flight is answered by the same agents (no Python started).
    again = SSHTarget("again", config)
    try:
        reports = again.connect()
        assert all(report["ran"] for report in reports.values())
        now = _agent_pids(config)
        assert now[1] == agents[1]
        assert _forked_by(again, hosts.addresses[1]) == agents[1][0]
    finally:
        again.close()


def test_a_host_that_refuses_forwarding_runs_each_command_in_a_session_of_its_own(tmp_path):
    from sshhosts import loopback_hosts

    refusing = loopback_hosts(tmp_path / "hosts", 1, first=40)
    refusing.port = 2240
    refusing.sshd_options = ["AllowTcpForwarding no"]
    refusing.start()
    try:
        config = _config(refusing, tmp_path)
        workdir = _job_dir(tmp_path)
        target = SSHTarget("refusing", config)
        try:
            target.connect()
            _run_true(target, str(workdir))
            assert target.leftovers("no-such-run") == []
        finally:
            target.close()
        [entry] = _kept(config)
        assert entry["agents"] == []
        assert "forwarding" in entry["agent_refused"]
    finally:
        refusing.stop()


def test_a_task_started_by_the_agent_is_found_with_what_it_left_by_the_runs_ps(hosts,
                                                                                tmp_path):
    """A keeper forked by the resident agent lacks its run's marker in its environment: its
    note in the workdir's keepers folder is what `ps` finds it by, with a double-forked,
    setsid, empty-environment daemon it adopted."""
    config = _config(hosts, tmp_path)
    workdir = _job_dir(tmp_path)
    (workdir / "outputs").mkdir()
    shutil.copy(Path(__file__).parent / "jobs" / "daemon.py", workdir)
    run_id = f"keeper-{uuid.uuid4().hex[:6]}"
    target = SSHTarget("keeper", config)
    try:
        target.connect()
        address = hosts.addresses[0]
        agent = _agent_pids(config)[0][0]
        handle = target.start(ProcessSpec(
            host=address, argv=("python3", "daemon.py"), env={"TFSUBMIT_RUN_ID": run_id},
            cwd=str(workdir), role="worker", index=0))
        assert next(iter(handle.lines())) == "daemon started"
        daemon = int((workdir / "outputs" / "daemon.pid").read_text())
        notes = list((tmp_path / "remote" / "keepers" / run_id).iterdir())
        assert len(notes) == 1
        keeper = int(notes[0].name)
        assert "TFSUBMIT_KEEPER_OF" not in open(f"/proc/{keeper}/environ").read()  # forked
        assert _forked_by_pid(keeper) == agent
        assert (address, daemon) in target.leftovers(run_id)
        # (the test hosts are one machine: every host's `ps` sees it; one kills it)
        target.kill([(host, pid) for host, pid in target.leftovers(run_id) if host == address])
        assert wait_until(lambda: handle.poll() is not None, 60, "the task to end")
        assert wait_until(lambda: target.leftovers(run_id) == [], 60, "nothing left")
        assert wait_until(lambda: not (tmp_path / "remote" / "keepers" / run_id).exists(), 60,
                          "the keeper's note to go")
    finally:
        target.close()


def test_the_note_of_a_keeper_killed_outright_is_removed_by_the_runs_ps(hosts, tmp_path):
    """SIGKILL leaves a keeper no time to remove its note: the run's `ps` (the leftover
    check after every stop) removes it, and the run's folder with its last note."""
    config = _config(hosts, tmp_path)
    workdir = _job_dir(tmp_path)
    run_id = f"killed-{uuid.uuid4().hex[:6]}"
    notes = tmp_path / "remote" / "keepers" / run_id
    target = SSHTarget("killed", config)
    try:
        target.connect()
        handle = _start_sleeper(target, hosts.addresses[0], workdir, run_id)
        (keeper,) = [int(note.name) for note in notes.iterdir()]
        os.kill(keeper, signal.SIGKILL)
        assert wait_until(lambda: not os.path.exists(f"/proc/{keeper}"), 60, "the keeper gone")
        assert (notes / str(keeper)).exists()  # it had no time to remove its note
        left = target.leftovers(run_id)  # the task, found by its marker
        assert left and keeper not in {pid for _, pid in left}
        assert not notes.exists()
        target.kill([(host, pid) for host, pid in left if host == hosts.addresses[0]])
        assert wait_until(lambda: target.leftovers(run_id) == [], 60, "nothing left")
        assert wait_until(lambda: handle.poll() is not None, 60, "the task's end to be seen")
    finally:
        target.close()


def _forked_by_pid(pid: int) -> int:
    """The grandparent of `pid`."""
    def parent(of: int) -> int:
        return int(open(f"/proc/{of}/stat").read().rsplit(")", 1)[1].split()[1])

    return parent(parent(pid))


def test_tfsubmit_connections_lists_them_and_closes_the_idle_ones_only(hosts, tmp_path):
    config = _config(hosts, tmp_path)
    busy_host, idle_host = hosts.addresses
    workdir = _job_dir(tmp_path)
    first = SSHTarget("first", config)  # installs the runtime (SFTP channels: closed)
    first.connect()
    first.close()
    target = SSHTarget("conns", config)
    handle = None
    try:
        target.connect()
        handle = _start_sleeper(target, busy_host, workdir)  # holds a channel
        assert wait_until(lambda: [e["channels"] for e in _kept(config)] == [1, 0], 60,
                          "only the job's channel in use")

        listed = run_cli("connections", timeout=60)
        assert listed.returncode == 0, listed.stderr
        lines = {line.split()[0]: line for line in listed.stdout.splitlines()[1:]
                 if f"key {config.key_file} " in line}  # (earlier tests' connections too)
        assert "1 channel(s) in use" in lines[f"root@{busy_host}:2222"]
        assert "idle " in lines[f"root@{idle_host}:2222"]
        assert "host agent pid" in lines[f"root@{idle_host}:2222"]

        bad = run_cli("connections", "close", "10.9.9.9", timeout=60)  # nothing kept there
        assert bad.returncode == 2 and "no connection to 10.9.9.9 is kept" in bad.stderr
        not_ip = run_cli("connections", "close", "host-a", timeout=60)
        assert not_ip.returncode == 2 and "'host-a' is not an IP address" in not_ip.stderr
        assert [e["address"] for e in _kept(config)] == [busy_host, idle_host]  # untouched

        closed = run_cli("connections", "close", idle_host, busy_host, timeout=60)
        assert closed.returncode == 0, closed.stderr
        assert f"root@{idle_host}:2222" in closed.stdout.splitlines()[0]  # "Closed N ..."
        assert f"Left open: root@{busy_host}:2222, 1 channel(s) in use" in closed.stdout
        assert [e["address"] for e in _kept(config)] == [busy_host]
        assert handle.poll() is None  # the job's connection and process untouched
    finally:
        if handle is not None:
            handle.signal_group(signal.SIGKILL)
            wait_until(lambda: handle.poll() is not None, 60, "the job to end")
        target.close()
    assert wait_until(lambda: [e["channels"] for e in _kept(config)] == [0], 60,
                      "the job's channel to close")
    everything = run_cli("connections", "close", timeout=60)
    assert everything.returncode == 0 and f"root@{busy_host}:2222" in everything.stdout
    assert wait_until(lambda: sshpool.call("stats") is None, 60, "the emptied pool to exit")
    after = run_cli("connections", timeout=60)
    assert after.returncode == 0 and "No SSH connections are kept" in after.stdout


def test_the_agents_guard_hashes_the_runtime_again_once_any_file_of_it_changed(hosts,
                                                                              tmp_path):
    """The guard run by a resident agent skips hashing the runtime when its files are as
    the agent's own guard saw them; a same-size edit with its mtime put back is still
    seen (its ctime changed), and the runtime is replaced as a planted one is."""
    config = _config(hosts, tmp_path)
    workdir = _job_dir(tmp_path)
    target = SSHTarget("checked", config)
    try:
        target.connect()
        _run_true(target, str(workdir))  # the agents run
        assert all(_agent_pids(config))
    finally:
        target.close()
    errors = Path(target.runtime) / "tfsubmit" / "errors.py"
    before = errors.stat()
    text = errors.read_text()
    errors.write_text(text.replace("class", "clas_", 1))  # same size
    os.utime(errors, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert errors.stat().st_size == before.st_size
    again = SSHTarget("again", config)
    try:
        reports = again.connect()
        assert any(report.get("replaced_runtime") for report in reports.values())
        assert all(report["ran"] for report in reports.values())
    finally:
        again.close()
    assert errors.read_text() == text


def test_the_guard_trusts_what_its_agent_verified_only_while_its_files_are_unchanged(
        tmp_path):
    """The cache itself: a runtime that does not hash to HASH runs when the resident
    agent's record of it (VERIFIED) matches its files' stat, and is refused otherwise."""
    import subprocess
    import sys

    from tfsubmit.store.package import package_hash, package_sources
    from tfsubmit.targets.ssh import GUARD

    wd = tmp_path / "wd"
    wd.mkdir(mode=0o700)
    rt = wd / "runtime" / package_hash()
    package, sources = package_sources()
    for path in sources:
        dest = rt / path.relative_to(package.parent)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(path.read_bytes())
    with (rt / "tfsubmit" / "errors.py").open("a") as changed:
        changed.write("# not the code of this hash\n")
    record = f"""
import sys, types
from pathlib import Path
rt, want = {str(rt)!r}, {package_hash()!r}
files = sorted(p for p in Path(rt, "tfsubmit").rglob("*.py") if "__pycache__" not in p.parts)
seen = [(str(p), s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns)
        for p, s in ((p, p.stat()) for p in files)]
if sys.argv[1] == "recorded":
    sys.modules["tfsubmit.targets.agentd"] = types.SimpleNamespace(VERIFIED={{(rt, want): seen}})
sys.argv = ["-c", {str(wd)!r}, rt, want, "preflight", {str(wd)!r}, "0"]
exec(compile({GUARD!r}, "<guard>", "exec"), {{"__name__": "__main__"}})
"""

    def guard(mode: str) -> dict:
        done = subprocess.run([sys.executable, "-S", "-c", record, mode], input="",
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    assert guard("recorded")["ran"] is True  # trusted: as recorded, not hashed again
    assert "ran" not in guard("none") and guard("none")["runtime_hash"] != package_hash()
