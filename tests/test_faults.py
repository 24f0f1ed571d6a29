"""Fault injection, one test per numbered item of the reliability issue (#13): each one failed
on main before the fix. Real processes, real files; no mocks of what the item names."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tfsubmit.pipeline.snapshot import take_snapshot
from tfsubmit.store.objects import ObjectStore
from tfsubmit.store.snapshots import materialize

JOBS = Path(__file__).resolve().parent / "jobs"


def test_13_a_folder_and_an_alias_of_it_both_ship(tmp_path):
    """`a_alias -> data` beside `data/x.txt` used to ship only `a_alias/x.txt`, skipping `data`
    as a "symlink loop"; a real loop (`data/up -> ..`) is still cut."""
    src = tmp_path / "src"
    (src / "data").mkdir(parents=True)
    (src / "data" / "x.txt").write_text("x\n")
    (src / "train.py").write_text("open('data/x.txt').read()\n")
    os.symlink("data", src / "a_alias")
    os.symlink("..", src / "data" / "up")
    store = ObjectStore(tmp_path / "objects")
    snap = take_snapshot(src, store, entry_script="train.py")
    assert {"data/x.txt", "a_alias/x.txt", "train.py"} <= set(snap.files)
    assert "symlink loop" in snap.skipped["data/up"]
    assert "a_alias/up" in snap.skipped
    materialize(snap, store, tmp_path / "staged")
    assert (tmp_path / "staged" / "data" / "x.txt").read_text() == "x\n"


SLOW_START = """
import sys, time
print("2026-11-28 05:45:58.123456: I tensorflow/core/platform/cpu_feature_guard.cc:210] noise",
      file=sys.stderr, flush=True)
print("I0000 00:00:1732772758.123456    1234 grpc_server_lib.cc:467] Started server", flush=True)
time.sleep(6)  # TensorFlow connecting on a loaded machine: silence
for step in range(5):
    print(f"step {step}", flush=True)
    time.sleep(0.2)
"""


def _supervise(tmp_path, code, run_id, **kwargs):
    import sys
    import threading

    from tfsubmit.pipeline.supervise import supervise
    from tfsubmit.spec.process import ProcessSpec
    from tfsubmit.store.runlog import RunLog
    from tfsubmit.targets.local import LocalTarget

    spec = ProcessSpec(host="local", argv=(sys.executable, "-c", code),
                       env={"TFSUBMIT_RUN_ID": run_id}, cwd=str(tmp_path), role="worker",
                       index=0)
    log = RunLog(tmp_path / "output.log")
    try:
        return supervise(LocalTarget(), [spec], run_id=run_id, log=log,
                         log_dir=tmp_path / "logs", cancel=threading.Event(), grace_seconds=2,
                         **kwargs)
    finally:
        log.close()


def test_12_start_up_silence_is_not_a_hang(tmp_path):
    """hang_timeout_seconds used to count from the start: a job silent while TensorFlow
    connects was stopped as hung before its first step."""
    outcome = _supervise(tmp_path, SLOW_START, "slow-start-1", hang_seconds=4,
                         startup_seconds=120)
    assert outcome.status == "Completed", outcome.reason
    assert "step 4" in (tmp_path / "output.log").read_text()


def test_12_start_up_has_its_own_limit(tmp_path):
    outcome = _supervise(tmp_path, "import time; print('I0000 00:00:1.1 1 x] noise', "
                         "flush=True); time.sleep(300)", "stuck-start-1", hang_seconds=1,
                         startup_seconds=3)
    assert outcome.status == "Failed"
    assert outcome.reason == ("no progress (a metric, or a line of the job's own) within "
                              "startup_timeout_seconds=3")


# -- 14: bad input is refused at submit, naming the field or file, exit 2, nothing created ------

GOOD = "source_directory: {src}\nentry_script: train.py\n"
BAD_JOBS = [
    ("max_run_duration_seconds: .nan\n", "max_run_duration_seconds"),
    ("hang_timeout_seconds: true\n", "hang_timeout_seconds"),
    ('script_params: {"--name": "a\\0b"}\n', "script_params: holds a NUL byte"),
    ('environment_variables: {X: "a\\0b"}\n', "environment_variables: holds a NUL byte"),
    ("distributed_backend: multiworker\nprocess_count_per_node: 40000\n",
     "process_count_per_node: must be 1 .. 256"),
    ("distributed_backend: ps\nworker_count: 60\nparameter_server_count: 1\n",
     "TensorFlow tasks, but a job has ports for at most 50"),
    ("entry_script: train.py\n", "appears twice"),
    ("1: x\n", "key 1 is not a string"),
    # A billion laughs: 9 aliases a level, 9 levels (~490 million values once expanded).
    ("a0: &a0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 9)),
     "expand to 490,329,068 values, more than 100,000"),
    ("custom_docker_image: debian:12\n", "custom_docker_image: only used with docker targets"),
]
BAD_SOURCES = [
    ('""', "source_directory: is empty"),
    ("~nosuchuser/x", "home folder of an unknown user"),
    ("/tmp/" + "a" * 300, "File name too long"),
]


def _cli(*args, workspace, stdin=None):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    return subprocess.run([sys.executable, "-m", "tfsubmit.cli", "--workspace", str(workspace),
                           *args], capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture
def src(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "train.py").write_text("print('hi')\n")
    return folder


def _refused(job_file, words, workspace):
    done = _cli("submit", str(job_file), "--detach", workspace=workspace)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert words in done.stderr
    assert str(job_file) in done.stderr or words in done.stderr
    runs = workspace / "runs"
    assert not runs.exists() or not any(runs.iterdir())


@pytest.mark.parametrize(("extra", "words"), BAD_JOBS, ids=[w for _, w in BAD_JOBS])
def test_14_bad_job_fields_are_refused_at_submit(tmp_path, src, extra, words):
    job = tmp_path / "job.yaml"
    job.write_text(GOOD.format(src=src) + extra)
    _refused(job, words, tmp_path / "ws")


@pytest.mark.parametrize(("source", "words"), BAD_SOURCES, ids=[w for _, w in BAD_SOURCES])
def test_14_bad_source_directories_are_refused(tmp_path, source, words):
    job = tmp_path / "job.yaml"
    job.write_text(f"source_directory: {source}\nentry_script: train.py\n")
    _refused(job, words, tmp_path / "ws")


def test_14_unreadable_job_files_are_named(tmp_path):
    folder = tmp_path / "job.yaml"
    folder.mkdir()
    _refused(folder, "is a folder", tmp_path / "ws")
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("entry_script: tr\xe4in.py\n".encode("latin-1"))
    _refused(latin, "is not UTF-8 text", tmp_path / "ws")


def test_14_bad_targets_files_are_named(tmp_path, src):
    job = tmp_path / "job.yaml"
    job.write_text(GOOD.format(src=src))
    workspace = tmp_path / "ws"
    workspace.mkdir()
    targets = workspace / "targets.yaml"
    targets.write_text("local:\n  type: ssh\n  hosts: [{address: 127.0.0.1}]\n")
    _refused(job, "target 'local' is built in", workspace)
    targets.write_bytes(b"gpu:\n  type: ssh # \xff\n")
    _refused(job, "is not UTF-8 text", workspace)
    # Issue 27 (13): a huge targets.yaml is refused by its size, at once.
    targets.write_text("# " + "x" * (2 * 1024 * 1024) + "\n")
    _refused(job, f"targets file {targets} is 2,097,155 bytes, more than the 1,048,576",
             workspace)


def test_27_13_a_job_file_that_is_a_pipe_is_refused_not_waited_on(tmp_path):
    """`tfsubmit submit FIFO` blocked forever on the read."""
    fifo = tmp_path / "job.yaml"
    os.mkfifo(fifo)
    done = _cli("submit", str(fifo), workspace=tmp_path / "ws")
    assert done.returncode == 2, done.stderr
    assert f"job file {fifo} is not a regular file (a pipe, a device or a socket)" \
        in done.stderr


def test_14_a_closed_pipe_is_not_a_crash(tmp_path):
    """`tfsubmit show RUN | head` used to end in a BrokenPipeError traceback."""
    import subprocess
    import sys

    from tfsubmit.store.layout import Workspace
    from tfsubmit.store.record import RunRecord

    workspace = Workspace(tmp_path / "ws")
    RunRecord.create(workspace, "exp_1", "exp", {"entry_script": "train.py"})
    read, write = os.pipe()
    os.close(read)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    done = subprocess.run([sys.executable, "-m", "tfsubmit.cli", "--workspace",
                           str(workspace.root), "show", "exp_1"], stdout=write,
                          stderr=subprocess.PIPE, text=True, env=env, timeout=120)
    os.close(write)
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    assert done.returncode == 0


# Fuzzing: whatever the input, the answer is a job or an error naming what is wrong.

_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=3),
    max_leaves=8,
)
_fields = st.sampled_from(["source_directory", "entry_script", "script_params",
                           "compute_target", "pip_packages", "node_count",
                           "process_count_per_node", "distributed_backend", "worker_count",
                           "parameter_server_count", "max_run_duration_seconds",
                           "hang_timeout_seconds", "environment_variables", "framework_version",
                           "max_restarts", "chief", "unknown_field"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes=st.dictionaries(_fields, _values, max_size=5))
def test_14_fuzzed_job_fields_give_a_job_or_a_named_error(changes):
    from tfsubmit.errors import JobSpecError
    from tfsubmit.spec.job import TrainingJob

    data = {"source_directory": str(JOBS), "entry_script": "echo_args.py", **changes}
    try:
        job = TrainingJob(**data)
    except JobSpecError as exc:
        assert any(str(exc).startswith(f) or f"{f}:" in str(exc) or f in str(exc)
                   for f in [*changes, "job"]), str(exc)
        return
    for key in ("max_run_duration_seconds", "hang_timeout_seconds"):
        value = getattr(job, key)
        assert value is None or (math.isfinite(value) and value > 0)
    assert job.script_arguments() == [str(a) for a in job.script_arguments()]


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_14_fuzzed_job_files_give_a_job_or_a_named_error(tmp_path, text):
    from tfsubmit.errors import JobSpecError
    from tfsubmit.spec.job import load_job_file

    path = tmp_path / "job.yaml"
    path.write_bytes(text)
    try:
        load_job_file(path)
    except JobSpecError as exc:
        assert str(path) in str(exc)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.binary(max_size=200) | st.text(max_size=200).map(str.encode)
       | st.dictionaries(st.text(max_size=8), _values, max_size=3).map(
           lambda d: __import__("yaml").safe_dump(d).encode()))
def test_14_fuzzed_targets_files_give_targets_or_a_named_error(tmp_path, text):
    from tfsubmit.errors import TargetError
    from tfsubmit.targets.config import load_targets

    (tmp_path / "targets.yaml").write_bytes(text)
    try:
        load_targets(tmp_path)
    except TargetError as exc:
        assert "targets.yaml" in str(exc)


# -- 5 and 7: exactly one runner per run; readers tell a live one by its lock ------------------


def _quick_job(seconds: float = 1, **changes):
    from tfsubmit import TensorFlow

    return TensorFlow(source_directory=str(JOBS), entry_script="sleeper.py",
                      script_params=[str(seconds)], **changes)


def _flow_runs_named(prefect_api, name: str) -> list[dict]:
    return prefect_api("/flow_runs/filter", {"flow_runs": {"name": {"any_": [name]}}})


def test_7_a_reader_never_sees_a_new_run_die(workspace):
    """Polling `get_status()` right after submit used to catch the run between run.json and
    runner.pid and record it Failed ("runner process died") in 1 try of 3."""
    from tfsubmit import Experiment

    experiment = Experiment("reader-race", workspace=workspace.root)
    for _ in range(3):
        run = experiment.submit(_quick_job(0.2))
        seen = []
        deadline = time.monotonic() + 300
        while (status := run.get_status()) not in ("Completed", "Failed", "Canceled"):
            seen.append(status)
            assert time.monotonic() < deadline
        assert status == "Completed", run.get_details().get("reason")
        assert set(seen) <= {"Queued", "Preparing", "Running"}


def test_5_a_late_fork_server_does_not_run_the_job_twice(workspace, prefect_api, monkeypatch):
    """A fork server too busy to answer: the submitter goes on without handing it anything,
    the worker's command runs the engine in a Python of its own after a while, and the
    fork server's late child finds nobody waiting and runs nothing: one flow run, the job
    once."""
    from tfsubmit import Experiment
    from tfsubmit.service import forkserver
    from tfsubmit.store.layout import read_json

    monkeypatch.setattr(forkserver, "REPLY_TIMEOUT", 1.0)  # the submitter's patience, shortened
    server_pid = read_json(workspace.forkserver_state)["pid"]
    os.kill(server_pid, signal.SIGSTOP)  # a fork server too busy to answer in time
    try:
        run = Experiment("late-fork", workspace=workspace.root).submit(_quick_job(3))
        details = run.wait_for_completion(timeout=300)
    finally:
        os.kill(server_pid, signal.SIGCONT)  # now it forks its engine, late
    assert details["status"] == "Completed"
    assert "did not answer in 10 s" in workspace.worker_log.read_text()
    assert len(_flow_runs_named(prefect_api, run.id)) == 1
    assert prefect_api(f"/flow_runs/{details['flow_run_id']}")["run_count"] == 1
    assert run.get_metrics()["ready"] == 1.0  # not doubled
    assert run.paths.output_log.read_text().count("ready: sleeping") == 1
    assert run.get_status() == "Completed"


def test_5_a_burst_of_submissions_gives_each_runner_its_own_lock_only(workspace):
    """A burst of 20 submissions: the worker starts as many at once as its concurrency limit
    allows (the others wait, Queued), and each flow run's process holds its own run's lock
    only (a lock held by the wrong process would keep a dead run looking alive)."""
    from concurrent.futures import ThreadPoolExecutor

    from tfsubmit import Experiment
    from tfsubmit.service.server import concurrency_limit

    experiment = Experiment("burst", workspace=workspace.root)
    with ThreadPoolExecutor(20) as pool:
        runs = list(pool.map(lambda _: experiment.submit(_quick_job(60)), range(20)))
    try:
        limit = min(concurrency_limit(), 20)
        deadline = time.monotonic() + 300
        while (running := [r for r in runs if r.get_status() == "Running"]) and \
                len(running) < limit or not running:
            assert time.monotonic() < deadline, [run.get_status() for run in runs]
            time.sleep(0.2)
        statuses = [run.get_status() for run in runs]
        assert statuses.count("Running") + statuses.count("Preparing") <= limit, statuses
        for run in running:
            runner = run.record.read()["runner_pid"]
            held = set()
            for fd in Path(f"/proc/{runner}/fd").iterdir():
                try:
                    target = os.readlink(fd)
                except OSError:
                    continue
                if target.endswith("/runner.lock"):
                    held.add(target)
            assert held == {str(run.paths.runner_lock)}, (run.id, held)
    finally:
        for run in runs:
            run.cancel()
    ended = {run.id: (run.get_status(), run.get_details().get("reason")) for run in runs}
    assert all(status == "Canceled" for status, _ in ended.values()), \
        {run_id: said for run_id, said in ended.items() if said[0] != "Canceled"}


# -- 4: kill -9 of the runner: whoever touches the run next reaps it ---------------------------


def _kill_runner(run) -> None:
    pid = run.record.read()["runner_pid"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while run.record.runner_alive():  # the kernel drops its lock as it tears it down
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_4_a_killed_runner_is_reaped_by_the_next_reader(workspace, prefect_api):
    """`kill -9` of the runner used to leave the job running (reparented to PID 1), `show`
    saying Failed while `runs` said Running, outputs never collected, and `cancel` printing
    "no process of it is left" while one was."""
    from conftest import run_cli, wait_for_line, wait_until

    from tfsubmit import Experiment
    from tfsubmit.system.processes import processes_of_run

    run = Experiment("runner-killed", workspace=workspace.root).submit(_quick_job(300))
    wait_for_line(run, "ready: sleeping")
    assert len(processes_of_run(run.id)) == 3  # the script, its child, a setsid child
    _kill_runner(run)
    listed = run_cli("runs", "--experiment", "runner-killed")
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith(run.id))
    assert " Failed " in row, listed.stdout
    details = run.get_details()
    assert details["status"] == "Failed"
    assert "runner process died" in details["reason"]
    assert "stopped 3 leftover process(es)" in details["reason"]
    assert processes_of_run(run.id) == []
    assert run.get_metrics()["ready"] == 1.0  # collected from the node's folder
    assert "reaped:" in run.paths.output_log.read_text()
    wait_until(lambda: prefect_api(f"/flow_runs/{details['flow_run_id']}")["state"]["type"]
               == "CRASHED", 60, "its worker to report the flow run Crashed")
    cancel = run_cli("cancel", run.id)
    assert cancel.returncode == 0 and processes_of_run(run.id) == []


def test_4_the_next_submission_reaps_a_run_nobody_reads(workspace):
    """Nobody reads a run whose runner was killed: the next run's runner reaps it, so what
    is left of it does not run on until someone looks."""
    from conftest import wait_for_line

    from tfsubmit import Experiment
    from tfsubmit.system.processes import processes_of_run

    experiment = Experiment("runner-killed-unread", workspace=workspace.root)
    abandoned = experiment.submit(_quick_job(300))
    wait_for_line(abandoned, "ready: sleeping")
    _kill_runner(abandoned)
    experiment.submit(_quick_job(0.1)).wait_for_completion(timeout=300)
    deadline = time.monotonic() + 120
    while abandoned.record.read()["status"] != "Failed":  # its record, not a reader's view
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert processes_of_run(abandoned.id) == []


def test_4_a_killed_runner_leaves_nothing_on_ssh_hosts(workspace, hosts, job_dir):
    from conftest import wait_for_line
    from test_ssh import add_target

    from tfsubmit import Experiment, TensorFlow
    from tfsubmit.targets.config import get_target

    target_name = add_target(workspace, hosts)
    job = TensorFlow(source_directory=str(job_dir), entry_script="sleeper.py",
                     compute_target=target_name)
    run = Experiment("runner-killed-ssh", workspace=workspace.root).submit(job)
    wait_for_line(run, "ready: sleeping")
    _kill_runner(run)
    target = get_target(target_name, workspace.root)
    target.connect()
    try:
        assert len(target.processes(run.id).get("127.0.0.2", [])) == 3
        run.cancel()  # its first look finds the runner dead: the run is reaped, Failed
        details = run.get_details()
        assert details["status"] == "Failed"
        assert "runner process died" in details["reason"]
        # Both test hosts are this machine: each one's `ps` shows the same 3 processes.
        assert "stopped 6 leftover process(es)" in details["reason"]
        assert target.processes(run.id) == {}
        assert (run.paths.logs / "worker-0.log").is_file()
    finally:
        target.close()


# -- 11: storage faults ------------------------------------------------------------------------


def test_11_a_damaged_record_is_reported_never_overwritten(tmp_path):
    """A truncated run.json used to be silently overwritten (id, experiment, flow run id
    lost) or to crash `show` and `runs` with a traceback."""
    from tfsubmit.store.layout import UnreadableRecordError, Workspace
    from tfsubmit.store.record import RunRecord

    workspace = Workspace(tmp_path / "ws")
    record = RunRecord.create(workspace, "exp_1", "exp", {"entry_script": "train.py"})
    record.release_lock()
    RunRecord.create(workspace, "exp_2", "exp", {}).release_lock()
    damaged = '{"id": "exp_1", "experiment": "exp", "status": "Runn'
    record.paths.record.write_text(damaged)
    with pytest.raises(UnreadableRecordError, match="is damaged"):
        record.note(flow_run_id="x")
    assert record.paths.record.read_text() == damaged
    for args in (["show", "exp_1"], ["cancel", "exp_1"], ["logs", "exp_1"]):
        done = _cli(*args, workspace=workspace.root)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert "run.json is damaged" in done.stderr
    listed = _cli("runs", workspace=workspace.root)
    assert listed.returncode == 0, listed.stderr
    assert "exp_1" in listed.stdout and "Unreadable" in listed.stdout
    assert "exp_2" in listed.stdout
    assert record.paths.record.read_text() == damaged


# -- 8: cancel from anywhere, at any step -> Canceled ------------------------------------------


def test_8_a_cancel_from_prefect_stops_a_submitted_run(workspace, prefect_api):
    """Cancelling the flow run in Prefect (the UI, `prefect flow-run cancel`: a Cancelling
    state proposed, never forced) of a run submitted with Experiment.submit used to do
    nothing: training went on, Prefect stayed Cancelling. Prefect's worker stops it now."""
    from conftest import wait_for_line

    from tfsubmit import Experiment
    from tfsubmit.system.processes import processes_of_run

    run = Experiment("prefect-cancel", workspace=workspace.root).submit(_quick_job(300))
    wait_for_line(run, "ready: sleeping")
    flow_run_id = run.get_details()["flow_run_id"]
    prefect_api(f"/flow_runs/{flow_run_id}/set_state", {"state": {"type": "CANCELLING"}})
    details = run.wait_for_completion(timeout=120, raise_on_error=False)
    assert details["status"] == "Canceled"
    assert details["reason"].startswith("canceled from Prefect"), details["reason"]
    assert processes_of_run(run.id) == []
    assert "ready: sleeping" in run.paths.output_log.read_text()
    deadline = time.monotonic() + 60
    while prefect_api(f"/flow_runs/{flow_run_id}")["state"]["type"] != "CANCELLED":
        assert time.monotonic() < deadline
        time.sleep(0.5)


SLOW_BACKEND = '''
import time
def get_requires_for_build_wheel(config_settings=None):
    time.sleep(600)  # an install step that takes long: cancel it
    return []
'''


def test_8_a_cancel_during_the_environment_build_is_canceled(workspace, tmp_path):
    """A cancel while the job's environment is being built used to end Failed."""
    from conftest import wait_for_line

    from tfsubmit import Experiment

    package = tmp_path / "slowpkg"
    package.mkdir()
    (package / "pyproject.toml").write_text(
        '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n'
        '[project]\nname = "slowpkg"\nversion = "1.0"\n')
    (package / "backend.py").write_text(SLOW_BACKEND)
    run = Experiment("build-cancel", workspace=workspace.root).submit(
        _quick_job(1, pip_packages=[f"slowpkg @ file://{package}"]))
    wait_for_line(run, ": building (")
    deadline = time.monotonic() + 120
    while not _working_in(package):  # the installer is running the package's build backend
        assert time.monotonic() < deadline, run.paths.output_log.read_text()
        time.sleep(0.1)
    run.cancel()
    details = run.get_details()
    assert details["status"] == "Canceled", details.get("reason")
    assert _working_in(package) == []


def _working_in(folder) -> list[int]:
    """Live processes whose working directory is `folder`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and Path(os.readlink(entry / "cwd")) == folder:
                found.append(int(entry.name))
        except OSError:
            continue
    return found


# -- 9: a double-forked, setsid, empty-environment daemon does not outlive its run -------------


def _daemon_job(*args, **changes):
    from tfsubmit import TensorFlow

    return TensorFlow(source_directory=str(JOBS), entry_script="daemon.py",
                      script_params=list(args), **changes)


def _daemon_is_gone(run) -> None:
    from tfsubmit.system.processes import pid_alive

    pid = int((run.paths.outputs / "daemon.pid").read_text())
    deadline = time.monotonic() + 10
    while pid_alive(pid):  # SIGKILLed: gone once the kernel has torn it down
        assert time.monotonic() < deadline, f"the daemon {pid} outlived its run"
        time.sleep(0.05)


@pytest.mark.parametrize("how", ["cancel", "timeout", "failure"])
def test_9_a_daemon_does_not_outlive_its_local_run(workspace, how):
    """It used to survive cancel and max_run_duration_seconds, and cancel said nothing was
    left."""
    from conftest import wait_for_line

    from tfsubmit import Experiment

    job = {"cancel": _daemon_job(), "timeout": _daemon_job(max_run_duration_seconds=20),
           "failure": _daemon_job("fail")}[how]
    run = Experiment(f"daemon-{how}", workspace=workspace.root).submit(job)
    if how == "cancel":
        wait_for_line(run, "daemon started")
        run.cancel()
    details = run.wait_for_completion(timeout=300, raise_on_error=False)
    assert details["status"] == {"cancel": "Canceled"}.get(how, "Failed")
    _daemon_is_gone(run)


def test_9_a_daemon_does_not_outlive_its_ssh_run(workspace, hosts, job_dir):
    from conftest import wait_for_line
    from test_ssh import add_target

    from tfsubmit import Experiment, TensorFlow

    target = add_target(workspace, hosts)
    job = TensorFlow(source_directory=str(job_dir), entry_script="daemon.py",
                     compute_target=target)
    run = Experiment("daemon-ssh", workspace=workspace.root).submit(job)
    wait_for_line(run, "daemon started")
    run.cancel()
    assert run.get_status() == "Canceled"
    _daemon_is_gone(run)


# -- 3: secrets and permissions -----------------------------------------------------------------

SECRET = "s3cr3t-Value-9f8e7d"


def test_3_secret_values_reach_only_the_job(workspace, prefect_api):
    """environment_variables' values used to be stored in plain text in job.json (0644) and
    the Prefect database, and returned by the API as flow-run parameters; folders were 0755."""
    import hashlib
    import stat

    from tfsubmit import Experiment, TensorFlow

    job = TensorFlow(source_directory=str(JOBS), entry_script="secret.py",
                     secret_environment_variables={"API_TOKEN": SECRET})
    assert SECRET not in repr(job) and SECRET not in str(job.to_dict())
    run = Experiment("secrets", workspace=workspace.root).submit(job)
    details = run.wait_for_completion(timeout=300)
    digest = hashlib.sha256(SECRET.encode()).hexdigest()[:16]
    assert f"token sha256 {digest}" in run.paths.output_log.read_text()  # the job had it
    for path in run.paths.root.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    flow_run = prefect_api(f"/flow_runs/{details['flow_run_id']}")
    assert set(flow_run["parameters"]) == {"run_id", "workspace"}  # the job travels by folder
    assert SECRET not in json.dumps(flow_run)
    logs = prefect_api("/logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run["id"]]}}})
    assert SECRET not in json.dumps(logs)
    for folder in (workspace.runs, run.paths.root, run.paths.outputs, run.paths.logs):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    for path in (run.paths.record, run.paths.job, run.paths.output_log):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_3_secrets_never_go_to_a_deployment(tmp_path):
    from tfsubmit.api.experiment import submit_to_deployment
    from tfsubmit.errors import TfsubmitError
    from tfsubmit.spec.job import TrainingJob
    from tfsubmit.store.layout import Workspace

    job = TrainingJob(source_directory=str(JOBS), entry_script="secret.py",
                      secret_environment_variables={"API_TOKEN": SECRET})
    with pytest.raises(TfsubmitError, match="secret values are never sent"):
        submit_to_deployment(job, "submit-training/default", experiment="x",
                             workspace=Workspace(tmp_path))


# -- 2: nothing in an SSH host's workdir is trusted as is ---------------------------------------


def _ssh_target(hosts, workdir):
    from tfsubmit.targets.config import SSHTargetConfig
    from tfsubmit.targets.ssh import SSHTarget

    return SSHTarget("guarded", SSHTargetConfig(**hosts.target_config(workdir=str(workdir))))


@pytest.mark.parametrize("how", ["another user's", "world-writable"])
def test_2_an_untrusted_workdir_is_refused(hosts, tmp_path, how):
    from tfsubmit.errors import TargetError

    workdir = tmp_path / "shared"
    workdir.mkdir()
    if how == "another user's":
        os.chown(workdir, 65534, 65534)
        words = "belongs to uid 65534"
    else:
        workdir.chmod(0o1777)
        words = r"is writable by others \(mode 1777\)"
    target = _ssh_target(hosts, workdir)
    try:
        with pytest.raises(TargetError, match=words):
            target.connect()
    finally:
        target.close()
    assert not (workdir / "runtime").exists()  # nothing was put there, nothing ran there


def test_2_a_planted_runtime_never_runs(hosts, tmp_path):
    """A runtime already in the workdir used to be trusted as is (the log said "uploaded 0
    bytes"): code planted in it ran as the login user."""
    from concurrent.futures import ThreadPoolExecutor

    workdir = tmp_path / "remote"
    target = _ssh_target(hosts, workdir)
    try:
        target.connect()
    finally:
        target.close()
    agent = Path(target.runtime) / "tfsubmit" / "targets" / "agent.py"
    witness = tmp_path / "planted-code-ran"
    agent.write_text(agent.read_text() + f"\nopen({str(witness)!r}, 'w').close()\n")
    # Both test hosts share the workdir, as hosts on NFS do, and three submissions connect
    # at once: six pre-flights find the planted runtime together (in CI one host's check
    # once read a file the other host's replacement had just removed).
    targets = [_ssh_target(hosts, workdir) for _ in range(3)]
    try:
        with ThreadPoolExecutor(len(targets)) as pool:
            reports = [r for rs in pool.map(lambda t: t.connect(), targets) for r in rs.values()]
    finally:
        for target in targets:
            target.close()
    assert not witness.exists()
    assert "planted-code-ran" not in agent.read_text()
    assert len(reports) == 6 and all(report.get("ran") for report in reports)
    assert any(report.get("replaced_runtime") for report in reports)
    # Nothing half-made is left beside the runtime.
    assert [p.name for p in (workdir / "runtime").iterdir()] == [Path(target.runtime).name]


def test_2_a_changed_object_is_refused_and_removed(tmp_path):
    from tfsubmit.store.snapshots import CorruptObjectError

    src = tmp_path / "src"
    src.mkdir()
    (src / "train.py").write_text("print('honest')\n")
    store = ObjectStore(tmp_path / "objects")
    snap = take_snapshot(src, store, entry_script="train.py")
    stored = store.path_for(snap.files["train.py"].sha256)
    stored.chmod(0o644)
    stored.write_text("print('planted')\n")
    with pytest.raises(CorruptObjectError, match="train.py: object .* does not match its hash"):
        materialize(snap, store, tmp_path / "staged")
    assert not stored.exists()  # the next submission sends it again


# -- 10: load -------------------------------------------------------------------------------------


def _all_completed(runs, timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    details = []
    for run in runs:
        details.append(run.wait_for_completion(
            timeout=max(1.0, deadline - time.monotonic()), raise_on_error=False))
    return details


def _listed(workspace_root, experiment: str) -> list[str]:
    done = _cli("runs", "--experiment", experiment, "--limit", "1000", workspace=workspace_root)
    assert done.returncode == 0, done.stderr
    return [line.split()[0] for line in done.stdout.splitlines()[1:] if line.strip()]


def test_10_forty_threads_submitting_at_once(workspace):
    """40 threads submitting at once used to leave 4 runs Failed before training with
    "503 Service Unavailable" from the embedded server, and missing from `tfsubmit runs`."""
    from concurrent.futures import ThreadPoolExecutor

    from tfsubmit import Experiment

    experiment = Experiment("load-threads", workspace=workspace.root)
    with ThreadPoolExecutor(40) as pool:
        runs = list(pool.map(lambda _: experiment.submit(_quick_job(1)), range(40)))
    details = _all_completed(runs, timeout=900)
    failed = {d["id"]: d.get("reason") for d in details if d["status"] != "Completed"}
    assert not failed, failed
    listed = _listed(workspace.root, "load-threads")
    assert sorted(listed) == sorted(run.id for run in runs)  # none missing, none twice


def test_10_thirty_processes_and_no_server_yet(tmp_path):
    """30 `tfsubmit submit` processes on a workspace with no server used to leave 5 runs
    Failed (4 x 503; one submitter stopped a server still booting and started a second)."""
    import subprocess
    import sys

    from tfsubmit.api import Run
    from tfsubmit.service.server import stop_server
    from tfsubmit.store.layout import Workspace

    workspace = Workspace(tmp_path / "ws")
    job = tmp_path / "job.yaml"
    job.write_text(f"source_directory: {JOBS}\nentry_script: sleeper.py\nscript_params: ['1']\n"
                   "experiment: load-cold\n")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    try:
        submitters = [subprocess.Popen(
            [sys.executable, "-m", "tfsubmit.cli", "--workspace", str(workspace.root), "submit",
             str(job), "--detach"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=env) for _ in range(30)]
        ids = []
        for submitter in submitters:
            out, err = submitter.communicate(timeout=600)
            assert submitter.returncode == 0, err
            ids.append(out.split("Submitted run ")[1].split()[0])
        details = _all_completed([Run(i, workspace=workspace.root) for i in ids], timeout=900)
        failed = {d["id"]: d.get("reason") for d in details if d["status"] != "Completed"}
        assert not failed, failed
        assert sorted(_listed(workspace.root, "load-cold")) == sorted(ids)
        started = workspace.server_log.read_text().count("Check out the dashboard at")
        assert started == 1, f"{started} servers started"
    finally:
        stop_server(workspace)


# -- 6: the outcome never depends on Prefect being up ------------------------------------------


@pytest.mark.parametrize("how", ["kill -9", "tfsubmit server stop"])
def test_6_losing_the_server_mid_run_keeps_the_outcome(tmp_path, how):
    """Losing the Prefect server mid-run used to turn a job whose processes exited 0 into
    Failed ("Connection refused") after ~70 s of hanging, exit_code and outputs missing,
    and Prefect kept the flow run Running forever."""
    from conftest import wait_for_line

    from tfsubmit import Experiment, TensorFlow
    from tfsubmit.service.prefect_api import PrefectAPI
    from tfsubmit.service.server import ensure_server, server_status, stop_server
    from tfsubmit.store.layout import Workspace, read_json

    workspace = Workspace(tmp_path / "ws")
    job = TensorFlow(source_directory=str(JOBS), entry_script="finishes.py",
                     script_params=["6"])
    try:
        run = Experiment("server-lost", workspace=workspace.root).submit(job)
        wait_for_line(run, "ready: working")
        flow_run_id = run.get_details()["flow_run_id"]
        if how == "kill -9":
            os.kill(read_json(workspace.server_state)["pid"], signal.SIGKILL)
        else:
            assert _cli("server", "stop", workspace=workspace.root).returncode == 0
        assert not server_status(workspace).running
        wait_for_line(run, "finished")
        ended_by = time.monotonic() + 60  # the job is done: its run ends without the API
        while run.get_status() not in ("Completed", "Failed", "Canceled"):
            assert time.monotonic() < ended_by, run.paths.output_log.read_text()
            time.sleep(0.2)
        details = run.get_details()
        assert details["status"] == "Completed", details.get("reason")
        assert details["exit_code"] == 0
        assert details["outputs"] == ["outputs/result.txt"]
        log = run.paths.output_log.read_text()
        assert "its flow run's end reaches Prefect once the API answers again" in log
        # The API is back (on the same port): the flow run's process, which waited for
        # it, lets Prefect's engine report the end.
        restarted = ensure_server(workspace).api_url
        assert restarted == f"http://127.0.0.1:{read_json(workspace.server_state)['port']}/api"
        api = PrefectAPI(restarted)
        assert restarted == run.record.read()["prefect_api_url"]  # the same port, kept
        deadline = time.monotonic() + 120
        while api.flow_run(flow_run_id)["state"]["type"] != "COMPLETED":
            assert time.monotonic() < deadline
            time.sleep(0.5)
    finally:
        stop_server(workspace)


def test_10_the_server_on_postgresql_holds_the_load(tmp_path):
    """`tfsubmit server start --database postgresql://...`: the team's server keeps its data
    in a real PostgreSQL and holds 30 concurrent submissions."""
    from concurrent.futures import ThreadPoolExecutor

    from postgres import Postgres

    from tfsubmit import Experiment
    from tfsubmit.service.server import stop_server
    from tfsubmit.store.layout import Workspace

    database = Postgres().start()
    workspace = Workspace(tmp_path / "ws")
    try:
        started = _cli("server", "start", "--database", database.url, workspace=workspace.root)
        assert started.returncode == 0, started.stderr
        assert oct(workspace.server_database.stat().st_mode & 0o777) == "0o600"
        experiment = Experiment("load-postgres", workspace=workspace.root)
        with ThreadPoolExecutor(30) as pool:
            runs = list(pool.map(lambda _: experiment.submit(_quick_job(1)), range(30)))
        details = _all_completed(runs, timeout=900)
        failed = {d["id"]: d.get("reason") for d in details if d["status"] != "Completed"}
        assert not failed, failed
        assert sorted(_listed(workspace.root, "load-postgres")) == sorted(r.id for r in runs)
        names = database.query("select name from flow_run").split()
        assert sorted(set(names) & {r.id for r in runs}) == sorted(r.id for r in runs)
    finally:
        stop_server(workspace)
        database.stop()


# -- 11: a full disk ------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path, workspace, monkeypatch):
    """A 24 MiB file system (tmpfs) for a workspace whose Prefect API is the session's."""
    import subprocess

    from tfsubmit.service.server import server_status, stop_server
    from tfsubmit.store.layout import Workspace

    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs", str(mount)],
                   check=True)
    monkeypatch.setenv("PREFECT_API_URL", server_status(workspace).api_url)
    small = Workspace(mount / "ws")
    try:
        yield small
    finally:
        stop_server(small)
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: Path) -> Path:
    filler = folder / "filler.bin"
    with filler.open("wb") as handle:
        try:
            while True:
                handle.write(bytes(1 << 16))
                handle.flush()
        except OSError:
            pass
    return filler


def _no_tmp_files(root: Path) -> None:
    assert [p for p in root.rglob("*.tmp")] == []


def test_11_a_full_disk_at_submit_is_a_clear_error(small_disk, tmp_path):
    """A full disk used to give tracebacks and leave a half-made run folder and .tmp files."""
    small_disk.root.mkdir(parents=True)
    job = tmp_path / "job.yaml"
    job.write_text(f"source_directory: {JOBS}\nentry_script: sleeper.py\nscript_params: ['1']\n")
    _fill(small_disk.root)
    done = subprocess.run(
        [sys.executable, "-m", "tfsubmit.cli", "--workspace", str(small_disk.root), "submit",
         str(job), "--detach"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "no space left on the device holding" in done.stderr
    assert str(small_disk.runs) in done.stderr
    assert not small_disk.runs.exists() or list(small_disk.runs.iterdir()) == []
    _no_tmp_files(small_disk.root)


def test_11_a_disk_filling_up_mid_run_ends_the_run_truly(small_disk):
    from tfsubmit import Experiment, TensorFlow

    job = TensorFlow(source_directory=str(JOBS), entry_script="fill.py")
    run = Experiment("disk-full", workspace=small_disk.root).submit(job)
    details = run.wait_for_completion(timeout=300, raise_on_error=False)
    assert details["status"] == "Failed"
    assert details["reason"] == "worker:0@local failed with exit code 1"
    assert details["exit_code"] == 1
    _no_tmp_files(small_disk.root)
    (run.paths.outputs / "fill.bin").unlink()  # space again: everything reads as it should
    shown = _cli("show", run.id, "--json", workspace=small_disk.root)
    assert shown.returncode == 0 and '"status": "Failed"' in shown.stdout, shown.stderr


def test_11_prefect_bookkeeping_never_takes_the_status_reserve(small_disk):
    """A run's flow run is made in the background, maybe while its job fills the disk: the
    record's note of it took the 64 KiB reserve kept for the status, and the run then ended
    with the disk's error instead of its job's exit code (seen once in CI)."""
    from tfsubmit.store.record import RunRecord

    record = RunRecord.create(small_disk, "bookkeeping", "disk-full", {"entry_script": "x.py"})
    filler = _fill(small_disk.root)
    try:
        assert record.note_if_room(flow_run_id="f") is False
        assert record.paths.reserve.exists()  # kept for the status
        assert "flow_run_id" not in record.read()
        record.settle("Failed", error="worker:0@local failed with exit code 1")
        assert not record.paths.reserve.exists()  # the status took it
        assert record.end()["status"] == "Failed"
        assert record.read()["error"] == "worker:0@local failed with exit code 1"
    finally:
        record.release_lock()
        filler.unlink()


def test_10_tfsubmits_own_api_client_rides_out_a_busy_server():
    """`tfsubmit submit --deployment` used to fail on one 503 (a SQLite server locked for a
    moment under load); a server that does not answer still fails at once."""
    import http.server
    import threading

    from tfsubmit.errors import ServerError
    from tfsubmit.service.prefect_api import PrefectAPI

    answers = [503, 503, 200]

    class Busy(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (the stdlib's name)
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            code = answers.pop(0)
            body = b'{"id": "x"}' if code == 200 else b'{"exception_message": "busy"}'
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        api = PrefectAPI(f"http://127.0.0.1:{server.server_port}/api", timeout=10)
        assert api.call("POST", "/flow_runs/", {}) == {"id": "x"}
        assert answers == []
    finally:
        server.shutdown()
        server.server_close()
    started = time.monotonic()
    with pytest.raises(ServerError, match="does not answer"):
        PrefectAPI(f"http://127.0.0.1:{server.server_port}/api", timeout=10).call("GET", "/x")
    assert time.monotonic() - started < 3


def test_27_14_what_exec_or_the_inputs_would_refuse_is_named_at_submit(tmp_path, src):
    """Arguments past what Linux execs (E2BIG, an internal error before), and inputs that
    are a FIFO or a symlink loop (said to be missing before), are refused when the job is
    made, naming the field, the argument or the path."""
    from tfsubmit import TensorFlow
    from tfsubmit.errors import JobSpecError

    def job(**fields):
        return TensorFlow(source_directory=str(src), entry_script="train.py", **fields)

    with pytest.raises(JobSpecError, match=r"script_params: argument 2 is 200,000 bytes, "
                                           r"more than the 131,072 one argument may be"):
        job(script_params=["--blob", "x" * 200_000])
    limit = int(os.sysconf("SC_ARG_MAX") * 0.75)
    with pytest.raises(JobSpecError, match=rf"come to [\d,]+ bytes, more than the "
                                           rf"{limit:,} a command line may hold"):
        job(script_params=[f"--x{i}=" + "y" * 100_000 for i in range(40)])
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(JobSpecError, match=rf"--data: '{fifo}' is not a file or folder "
                                           r"\(a pipe, a device or a socket\)"):
        job(inputs={"--data": str(fifo)})
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(JobSpecError, match=rf"--data: '{loop}' is a symbolic link loop"):
        job(inputs={"--data": str(loop)})
    job(script_params=[f"--x{i}=" + "y" * 20 for i in range(30_000)])  # 750 KB: fine
