"""The glue between the layers, without a flow around it: each task through `task.fn()` on the
local target (real processes, artifacts on the workspace's real Prefect server), the run
record's transitions and the status mappings both ways, and the tuner with a plain
`run_trial` (resume after an interrupted trial, early termination)."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from prefect.logging import disable_run_logger
from prefect.settings import PREFECT_API_URL, temporary_settings

from tfsubmit import TensorFlow
from tfsubmit.flows.common import prefect_state
from tfsubmit.pipeline.context import open_submission
from tfsubmit.runtime.metrics import metrics_file, read_metrics
from tfsubmit.service.prefect_api import STATUS_OF_STATE, status_of
from tfsubmit.service.server import server_status
from tfsubmit.spec.job import TrainingJob
from tfsubmit.store.cancel import CancelFlag, request_cancel
from tfsubmit.store.layout import Workspace
from tfsubmit.store.record import RUNNER_DIED, RunRecord
from tfsubmit.store.runlog import RunLog
from tfsubmit.system.processes import processes_of_run
from tfsubmit.targets.config import get_target
from tfsubmit.tasks import (
    collect_outputs,
    launch_topology,
    provision_nodes,
    resolve_environment,
    snapshot_source,
)
from tfsubmit.tasks.progress import RunArtifacts
from tfsubmit.tuning import MedianStopping, Sweep, choice
from tfsubmit.tuning.tuner import Tuner, open_study

# -- each task through task.fn() on the local target ------------------------------------------


# Tasks called through .fn() have no flow run to attach their artifacts to; Prefect warns.
pytestmark = pytest.mark.filterwarnings("ignore:Artifact creation outside:FutureWarning")


@pytest.fixture
def on_server(workspace):
    """Prefect calls (artifacts) go to the workspace's real embedded server."""
    with temporary_settings({PREFECT_API_URL: server_status(workspace).api_url}), \
            disable_run_logger():
        yield


def _submission(workspace, job_dir, script: str, params):
    job = TensorFlow(source_directory=str(job_dir), entry_script=script, script_params=params)
    sub = open_submission(job.to_dict(), "glue", None, str(workspace.root))
    return sub, get_target("local", workspace.root), RunArtifacts(sub.run_id)


def test_each_task_on_the_local_target(workspace, job_dir, on_server):
    sub, target, artifacts = _submission(workspace, job_dir, "scored.py", {"--loss": 0.25})
    assert sub.record.read()["status"] == "Preparing"  # made and claimed by this process
    assert sub.record.read()["runner_pid"] == os.getpid()

    snap = snapshot_source.fn(sub)
    assert "scored.py" in snap.files
    assert json.loads(sub.paths.manifest.read_text())["hash"] == snap.hash
    assert sub.record.read()["snapshot_hash"] == snap.hash

    env = resolve_environment.fn(sub, target)
    assert env.resolved and Path(env.python).is_file()
    assert "tensorflow" in sub.paths.freeze.read_text()
    assert sub.record.read()["environment_hash"] == env.hash

    nodes = provision_nodes.fn(sub, target, snap, env)
    assert [node.workdir for node in nodes] == [str(sub.paths.work)]
    assert (sub.paths.work / "scored.py").is_file() and nodes[0].python == env.python
    assert sub.record.read()["hosts"] == ["local"]

    outcome = launch_topology.fn(sub, target, nodes, env, artifacts)
    assert (outcome.status, [r.exit_code for r in outcome.results]) == ("Completed", [0])
    assert sub.record.read()["status"] == "Running"
    assert "[worker:0@local] loss 0.25; exiting with 0" in sub.paths.output_log.read_text()

    record = collect_outputs.fn(sub, target, nodes, outcome, artifacts)
    # The flow settles the outcome; the status follows when the runner ends the run.
    assert (record["outcome"], record["status"], record["exit_codes"]) == (
        "Completed", "Running", {"worker:0@local": 0})
    assert read_metrics([sub.paths.metrics]) == {"loss": [0.25]}
    assert sub.record.end()["status"] == "Completed"
    assert artifacts.metrics_id is not None  # the metrics table went to the server


def test_launch_stops_every_process_on_cancel_and_gives_the_reason(workspace, job_dir,
                                                                    on_server):
    sub, target, artifacts = _submission(workspace, job_dir, "sleeper.py", ["300"])
    env = resolve_environment.fn(sub, target)
    nodes = provision_nodes.fn(sub, target, snapshot_source.fn(sub), env)

    def cancel_once_running() -> None:
        deadline = time.monotonic() + 120
        while "ready: sleeping" not in sub.paths.output_log.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        request_cancel(sub.paths, "stopped by the glue test")

    canceller = threading.Thread(target=cancel_once_running)
    canceller.start()
    state = launch_topology.fn(sub, target, nodes, env, artifacts)
    canceller.join()
    assert state.is_cancelled()  # the task's own state, with the outcome as its data
    outcome = state.result(raise_on_failure=False)
    assert (outcome.status, outcome.reason) == ("Canceled", "stopped by the glue test")
    assert processes_of_run(sub.run_id) == []  # the child that left the group too


# -- the record and the status mappings -----------------------------------------------------


def test_record_transitions_and_views(tmp_path):
    ws = Workspace(tmp_path / "ws")
    record = RunRecord.create(ws, "r1", "exp", {"compute_target": "local"}, kind="sweep")
    assert (record.read()["status"], record.read()["kind"]) == ("Queued", "sweep")
    assert record.preparing(topology="single process")["status"] == "Preparing"
    assert record.running(pids=[1])["status"] == "Running"
    assert record.settle("Canceled", error="stop")["status"] == "Running"
    # A reader whose runner is gone sees Failed; the file keeps what was written.
    view = record.view(runner_alive=False)
    assert (view["status"], view["error"]) == ("Failed", "stop")
    assert record.read()["status"] == "Running"
    assert record.view(runner_alive=True)["status"] == "Running"
    ended = record.end()
    assert (ended["status"], ended["error"]) == ("Canceled", "stop")
    # An ended run stays ended: late transitions change facts, never the status.
    assert record.running(late=True)["status"] == "Canceled"
    assert record.failed("too late")["error"] == "stop"
    again = record.requeued(resumed=1.0)
    assert (again["status"], again["outcome"], again["error"]) == ("Queued", None, None)
    assert record.failed("the runner failed")["status"] == "Failed"


def test_a_run_without_outcome_ends_failed_and_a_dead_runner_is_named(tmp_path):
    record = RunRecord.create(Workspace(tmp_path / "ws"), "r2", "exp", {})
    assert record.view(runner_alive=False)["error"] == RUNNER_DIED
    assert record.end()["status"] == "Failed"


def test_concurrent_writers_lose_nothing(tmp_path):
    record = RunRecord.create(Workspace(tmp_path / "ws"), "r3", "exp", {})

    def write(prefix: str) -> None:
        for i in range(50):
            record.note(**{f"{prefix}{i}": i})

    threads = [threading.Thread(target=write, args=(p,)) for p in "abc"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    facts = record.read()
    assert all(f"{p}{i}" in facts for p in "abc" for i in range(50))


@pytest.mark.parametrize("state, status", sorted(STATUS_OF_STATE.items()))
def test_prefect_states_map_to_statuses(state, status):
    assert status_of({"state": {"type": state}}) == status


def test_no_state_yet_is_queued():
    assert status_of({}) == "Queued"


@pytest.mark.parametrize("outcome, state_type", [
    ("Completed", "COMPLETED"), ("Canceled", "CANCELLED"), ("Failed", "FAILED"),
    (None, "FAILED"),
])
def test_a_record_maps_to_its_flow_runs_final_state_and_back(outcome, state_type):
    state = prefect_state({"outcome": outcome, "error": "why"})
    assert state.type.value == state_type
    assert status_of({"state": {"type": state_type}}) == (outcome or "Failed")
    if outcome != "Completed":
        assert state.message == "why"


# -- the tuner with a plain run_trial -------------------------------------------------------


def _sweep(job_dir: Path, losses, **fields) -> Sweep:
    job = TensorFlow(source_directory=str(job_dir), entry_script="scored.py",
                     script_params={"--exit-code": 0})
    return Sweep(job, {"--loss": choice(*losses)}, primary_metric="loss", **fields)


def _tuner(ws: Workspace, spec: Sweep, run_trial) -> Tuner:
    paths = ws.paths_of("sweep1")
    if not paths.record.exists():
        RunRecord.create(ws, "sweep1", "tune", spec.to_dict(), kind="sweep")
    return Tuner(spec, open_study(paths, spec), ws, paths, "tune", "sweep1",
                 RunLog(paths.output_log), run_trial=run_trial)


def _log_losses(ws: Workspace, run_id: str, values, pause: float = 0.0) -> str:
    """What a trial's job does: log each loss to its metric file; stop when canceled."""
    paths = ws.paths_of(run_id)
    file = Path(metrics_file(str(paths.root), "worker", 0))
    file.parent.mkdir(parents=True, exist_ok=True)
    cancel = CancelFlag(paths)
    for value in values:
        if cancel.is_set():
            return "Canceled"
        with file.open("a") as out:
            out.write(json.dumps({"name": "loss", "value": value}) + "\n")
        time.sleep(pause)
    return "Completed"


def _finish(ws: Workspace, run_id: str, outcome: str) -> None:
    record = RunRecord(ws.paths_of(run_id))
    record.settle(outcome, error=None if outcome == "Completed" else "canceled")
    record.end()


def test_tuner_resumes_an_interrupted_trial_and_runs_each_grid_point_once(tmp_path):
    ws = Workspace(tmp_path / "ws")
    (tmp_path / "scored.py").write_text("")
    spec = _sweep(tmp_path, [0.4, 0.3, 0.2, 0.1], sampling="grid", max_total_runs=4)
    ran: list[str] = []
    never = threading.Event()

    def run_trial(run_id: str, job: TrainingJob) -> None:
        ran.append(run_id)
        if len(ran) == 3:  # the sweep's process "dies" while this trial runs
            never.wait()
            return
        loss = float(job.script_params["--loss"])
        _finish(ws, run_id, _log_losses(ws, run_id, [loss]))

    first = _tuner(ws, spec, run_trial)
    for _ in range(2):
        first._start_trial()
        first.running[-1].thread.join(timeout=60)
        first._reap()
    first._start_trial()  # its process "dies" while this third trial runs
    deadline = time.monotonic() + 60
    while len(ran) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.02)

    second = _tuner(ws, spec, run_trial)  # a new process resumes from the study
    assert second.run() is True
    never.set()
    assert ran[:3] == ["sweep1_t000", "sweep1_t001", "sweep1_t002"] and len(ran) == 5
    interrupted = RunRecord(ws.paths_of("sweep1_t002")).read()
    assert (interrupted["status"], interrupted["error"]) == (
        "Failed", "interrupted: the sweep stopped while it ran; re-queued")
    done = [t for t in second.trials.values() if t.status == "Completed"]
    assert sorted(t.params["--loss"] for t in done) == [0.1, 0.2, 0.3, 0.4]
    assert second.best().value == 0.1
    rows = RunRecord(ws.paths_of("sweep1")).read()["trials"]
    assert [row["value"] for row in rows[:4]] == [0.1, 0.2, 0.3, 0.4]  # best first


def test_tuner_stops_a_trial_the_policy_gives_up_on(tmp_path):
    ws = Workspace(tmp_path / "ws")
    (tmp_path / "scored.py").write_text("")
    spec = _sweep(tmp_path, [0.1, 5.0], sampling="grid", max_total_runs=2,
                  max_concurrent_runs=2,
                  early_termination=MedianStopping(evaluation_interval=1, delay_evaluation=1))

    def run_trial(run_id: str, job: TrainingJob) -> None:
        loss = float(job.script_params["--loss"])
        _finish(ws, run_id, _log_losses(ws, run_id, [loss] * 60, pause=0.05))

    tuner = _tuner(ws, spec, run_trial)
    assert tuner.run() is True
    by_loss = {t.params["--loss"]: t for t in tuner.trials.values()}
    assert by_loss[0.1].status == "Completed"
    assert by_loss[5.0].status == "EarlyTerminated"
    assert by_loss[5.0].error.startswith("early-terminated: median stopping")
    assert len(by_loss[5.0].curve) < 60
    assert RunRecord(ws.paths_of(by_loss[5.0].run_id)).read()["early_terminated"] is True


def test_a_sweep_out_of_time_cancels_its_running_trials_and_starts_no_more(tmp_path):
    """max_duration_seconds limits the whole sweep (Azure's max_duration_minutes): when it
    is reached the running trial is canceled, none is started after, and the reason says
    what is left."""
    ws = Workspace(tmp_path / "ws")
    (tmp_path / "scored.py").write_text("")
    spec = _sweep(tmp_path, [0.4, 0.3, 0.2], sampling="grid", max_total_runs=3,
                  max_duration_seconds=1)
    ran: list[str] = []

    def run_trial(run_id: str, job: TrainingJob) -> None:  # trains until it is canceled
        ran.append(run_id)
        _finish(ws, run_id, _log_losses(ws, run_id, [0.5] * 100_000, pause=0.02))

    tuner = _tuner(ws, spec, run_trial)
    began = time.monotonic()
    assert tuner.run() is False
    assert time.monotonic() - began < 60
    assert ran == ["sweep1_t000"]
    assert tuner.stopped_by == ("stopped: the sweep reached its max_duration_seconds (1 s) "
                                "with 1 trial(s) running and 2 not started; run.resume() goes "
                                "on with the trials left")
    (trial,) = tuner.trials.values()
    assert trial.status == "Canceled" and trial.value == 0.5
    assert RunRecord(ws.paths_of("sweep1_t000")).read()["status"] == "Canceled"
    assert tuner.stopped_by in ws.paths_of("sweep1").output_log.read_text()


def test_a_failed_scripts_traceback_keeps_its_own_frames():
    """Issue 28: the user's file and line survive however deep the library stack is; runs
    of library frames in between become one line each."""
    from tfsubmit.pipeline.failure import script_exception

    lib = "/root/.cache/tfsubmit/envs/x/lib/python3.11/site-packages/keras/src"
    lines = ["Epoch 1/3", "Traceback (most recent call last):",
             '  File "/runs/r/work/train.py", line 42, in <module>',
             "    model.fit(x, y)",
             *[f'  File "{lib}/m{i}.py", line {i}, in f{i}\n    call()'.split("\n")[k]
               for i in range(30) for k in (0, 1)],
             '  File "/runs/r/work/helpers.py", line 7, in loss',
             "    return tf.reduce_mean(y / 0)",
             *[f'  File "{lib}/n{i}.py", line {i}, in g{i}' for i in range(10)],
             "ValueError: Incompatible shapes: [32,1] vs. [32,10]"]
    found = script_exception(lines)
    trace = found["traceback"]
    assert (found["type"], found["message"]) == ("ValueError",
                                                 "Incompatible shapes: [32,1] vs. [32,10]")
    assert trace[0] == "Traceback (most recent call last):"
    assert trace[1].endswith('train.py", line 42, in <module>') and trace[2] == \
        "    model.fit(x, y)"
    assert "  ... 30 library frame(s) left out ..." in trace
    assert any('helpers.py", line 7' in line for line in trace)
    assert "  ... 7 library frame(s) left out ..." in trace  # 10, less the last 3
    assert trace[-2].endswith("n9.py\", line 9, in g9") and trace[-1].startswith("ValueError")
    assert len(trace) < 20
