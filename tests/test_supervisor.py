"""The supervisor on the real local target: real process groups, real signals."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

from tfsubmit.errors import TargetError
from tfsubmit.pipeline.supervise import supervise
from tfsubmit.spec.process import ProcessSpec
from tfsubmit.store.runlog import RunLog
from tfsubmit.system.processes import processes_of_run
from tfsubmit.targets.config import get_target
from tfsubmit.targets.local import LocalTarget

SPAWN_AND_SLEEP = """
import subprocess, sys, time
subprocess.Popen(["sleep", "300"])
subprocess.Popen(["sleep", "301"], start_new_session=True)
print("children started", flush=True)
time.sleep(300)
"""


def _spec(code: str, tmp_path: Path, run_id: str, index: int = 0, **env) -> ProcessSpec:
    return ProcessSpec(host="local", argv=(sys.executable, "-c", code),
                       env={"TFSUBMIT_RUN_ID": run_id, **env}, cwd=str(tmp_path),
                       role="worker", index=index)


def _run(specs, tmp_path, run_id, cancel=None, **kwargs):
    log = RunLog(tmp_path / "output.log")
    outcome = supervise(LocalTarget(), specs, run_id=run_id, log=log, log_dir=tmp_path / "logs",
                        cancel=cancel or threading.Event(), **kwargs)
    log.close()
    return outcome, (tmp_path / "output.log").read_text()


def test_success_streams_tagged_lines_and_per_process_logs(tmp_path):
    code = "import sys; print('out line'); print('err line', file=sys.stderr)"
    outcome, merged = _run([_spec(code, tmp_path, "ok-1")], tmp_path, "ok-1")
    assert outcome.status == "Completed" and outcome.reason is None
    assert [r.exit_code for r in outcome.results] == [0]
    assert "[worker:0@local] out line\n" in merged
    assert "[worker:0@local] err line\n" in merged
    # Two streams, two pipes: their lines interleave as they come, not in a fixed order.
    assert sorted((tmp_path / "logs" / "worker-0.log").read_text().splitlines()) == [
        "err line", "out line"]


def test_exit_code_is_reported_and_names_the_process(tmp_path):
    outcome, merged = _run([_spec("print('bye'); raise SystemExit(3)", tmp_path, "fail-1")],
                           tmp_path, "fail-1")
    assert outcome.status == "Failed"
    assert outcome.reason == "worker:0@local failed with exit code 3"
    assert outcome.results[0].exit_code == 3
    assert "[worker:0@local] bye" in merged


def test_one_failure_stops_the_others(tmp_path):
    specs = [_spec("import time; time.sleep(300)", tmp_path, "gang-1", 0),
             _spec("import time; time.sleep(0.5); raise SystemExit(5)", tmp_path, "gang-1", 1)]
    started = time.monotonic()
    outcome, merged = _run(specs, tmp_path, "gang-1", grace_seconds=2)
    assert time.monotonic() - started < 10
    assert outcome.reason == "worker:1@local failed with exit code 5"
    assert outcome.results[0].exit_code == -15
    assert processes_of_run("gang-1") == []
    assert "[tfsubmit] stopping 1 process(es): worker:1@local failed with exit code 5" in merged


def test_timeout_kills_the_group_and_escaped_children(tmp_path):
    started = time.monotonic()
    outcome, merged = _run([_spec(SPAWN_AND_SLEEP, tmp_path, "slow-1")], tmp_path, "slow-1",
                           max_seconds=5, grace_seconds=2)
    assert time.monotonic() - started < 15
    assert outcome.status == "Failed"
    assert outcome.reason == "exceeded max_run_duration_seconds=5"
    assert "children started" in merged
    assert processes_of_run("slow-1") == []


def test_cancel_terms_then_kills_a_process_that_ignores_term(tmp_path):
    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ignoring TERM', flush=True); time.sleep(300)")
    cancel = threading.Event()
    threading.Timer(1.0, cancel.set).start()
    started = time.monotonic()
    outcome, _ = _run([_spec(code, tmp_path, "stubborn-1")], tmp_path, "stubborn-1",
                      cancel=cancel, grace_seconds=1)
    assert outcome.status == "Canceled"
    assert outcome.results[0].exit_code == -9
    assert time.monotonic() - started < 8
    assert processes_of_run("stubborn-1") == []


def test_base_env_drops_the_orchestrators_python_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/orchestrator/site-packages")
    monkeypatch.setenv("PREFECT_API_URL", "http://secret")
    code = ("import os, json; print(json.dumps([os.environ.get(k) for k in "
            "('PYTHONPATH', 'PREFECT_API_URL', 'JOB')]))")
    outcome, merged = _run([_spec(code, tmp_path, "env-1", JOB="yes")], tmp_path, "env-1")
    assert '[worker:0@local] [null, null, "yes"]' in merged


def test_unknown_target_is_named(tmp_path):
    with pytest.raises(TargetError, match="compute_target: unknown target 'gpu-cluster'"):
        get_target("gpu-cluster", tmp_path)


class _TogetherLocal(LocalTarget):
    """The local target, its processes started together (as an SSH target's are)."""

    concurrent_start = True


def test_processes_started_together_are_all_stopped_when_one_cannot_start(tmp_path):
    run_id = "together-1"
    specs = [_spec("print('up', flush=True); import time; time.sleep(300)", tmp_path, run_id,
                   index=i) for i in range(4)]
    specs[2] = ProcessSpec(host="local", argv=(str(tmp_path / "no-such-program"),),
                           env={"TFSUBMIT_RUN_ID": run_id}, cwd=str(tmp_path), role="worker",
                           index=2)
    log = RunLog(tmp_path / "output.log")
    with pytest.raises(FileNotFoundError, match="no-such-program"):
        supervise(_TogetherLocal(), specs, run_id=run_id, log=log, log_dir=tmp_path / "logs",
                  cancel=threading.Event())
    log.close()
    assert processes_of_run(run_id) == []  # the three that started were stopped


def test_processes_started_together_run_as_one_job(tmp_path):
    run_id = "together-2"
    specs = [_spec(f"print('task {i}')", tmp_path, run_id, index=i) for i in range(6)]
    log = RunLog(tmp_path / "output.log")
    outcome = supervise(_TogetherLocal(), specs, run_id=run_id, log=log,
                        log_dir=tmp_path / "logs", cancel=threading.Event())
    log.close()
    assert outcome.status == "Completed"
    assert [(r.index, r.exit_code) for r in outcome.results] == [(i, 0) for i in range(6)]
    merged = (tmp_path / "output.log").read_text()
    assert all(f"[worker:{i}@local] task {i}" in merged for i in range(6))


def test_a_job_that_finished_as_the_cancel_came_is_completed(tmp_path):
    """Issue 27 (7): the outcome follows what the processes did: a job whose processes had
    all exited 0 when the cancel was seen is Completed, not Canceled."""
    cancel = threading.Event()

    def cancel_once_exited(handles):  # the job is done; then the cancel arrives
        deadline = time.monotonic() + 60
        while handles[0].poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        cancel.set()

    outcome, merged = _run([_spec("print('done', flush=True)", tmp_path, "race-1")], tmp_path,
                           "race-1", cancel=cancel, on_started=cancel_once_exited)
    assert outcome.status == "Completed" and outcome.reason is None
    assert "a cancel came as the job finished" in merged
    # A job still running when the cancel is seen is Canceled, as ever.
    cancel = threading.Event()
    cancel.set()
    outcome, _ = _run([_spec("import time; time.sleep(300)", tmp_path, "race-2")], tmp_path,
                      "race-2", cancel=cancel, grace_seconds=2)
    assert outcome.status == "Canceled"
