"""Hyperparameter sweeps end to end: real TensorFlow trials as child flow runs of the sweep's
flow on the embedded Prefect server, Optuna sampling, early termination, resume."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import time

import pytest
import yaml
from conftest import EXAMPLE, run_cli

from tfsubmit import Experiment, TensorFlow
from tfsubmit.api import SweepRun
from tfsubmit.system.processes import pid_alive, processes_of_run
from tfsubmit.tuning import MedianStopping, Sweep, choice, loguniform

pytestmark = pytest.mark.e2e


def example(**params) -> TensorFlow:
    return TensorFlow(source_directory=str(EXAMPLE), entry_script="train.py",
                      script_params={"--epochs": 2, "--samples": 400, **params})


def overlap(trials: list[dict]) -> int:
    """The most trials that ran at the same time."""
    events = sorted([(t["started"], 1) for t in trials] + [(t["finished"], -1) for t in trials])
    running = most = 0
    for _, change in events:
        running += change
        most = max(most, running)
    return most


def test_bayesian_sweep_of_six_trials_two_at_a_time(workspace, prefect_api, capsys):
    sweep = Sweep(example(),
                  space={"--learning-rate": loguniform(1e-4, 1e-1), "--batch-size": choice(16, 64)},
                  sampling="bayesian", seed=7, primary_metric="val_loss", goal="minimize",
                  max_total_runs=6, max_concurrent_runs=2)
    run = Experiment("sweep-e2e").submit(sweep)
    details = run.wait_for_completion(show_output=True)
    printed = capsys.readouterr().out
    assert details["status"] == "Completed"
    trials = run.get_trials()
    assert len(trials) == 6 and all(t["status"] == "Completed" for t in trials)
    assert len({json.dumps(t["params"], sort_keys=True) for t in trials}) == 6
    assert overlap(trials) == 2  # two at once, never three

    # The best trial is the best among the completed ones, and its run says so too.
    best = run.get_best_run()
    values = [t["value"] for t in trials]
    assert best.id == trials[0]["run_id"] and trials[0]["value"] == min(values)
    assert best.get_metrics()["val_loss"][-1] == min(values)
    assert best.script_params["--learning-rate"] == trials[0]["params"]["--learning-rate"]
    assert best.script_params["--epochs"] == 2  # the estimator's own params are kept
    assert f"[tfsubmit] sweep {run.id} Completed: best trial" in printed

    # Each trial is a child flow run of the sweep's flow run.
    sweep_flow_run = details["flow_run_id"]
    for trial in trials:
        child = prefect_api("/flow_runs/filter", {"flow_runs": {"name": {"any_": [
            trial["run_id"]]}}})[0]
        assert child["state"]["type"] == "COMPLETED"
        parent_task = prefect_api(f"/task_runs/{child['parent_task_run_id']}")
        assert parent_task["flow_run_id"] == sweep_flow_run

    # The summary: a table of trials best first, and a plot of the metric per trial.
    artifacts = {a["key"].rsplit("-", 1)[1]: a for a in prefect_api("/artifacts/filter", {
        "artifacts": {"flow_run_id": {"any_": [sweep_flow_run]}}})}
    rows = json.loads(artifacts["trials"]["data"])
    assert [row["run"] for row in rows] == [t["run_id"] for t in trials]
    assert [row["val_loss"] for row in rows] == sorted(values)
    assert {"--learning-rate", "--batch-size", "status", "duration_s"} <= set(rows[0])
    assert "![val_loss per trial](data:image/png;base64,iVBOR" in artifacts["summary"]["data"]
    assert (run.paths.outputs / "trials.png").read_bytes()[:4] == b"\x89PNG"


def test_a_clearly_worse_trial_is_stopped_early(workspace):
    """Two trials side by side; the one whose learning rate keeps the loss high is stopped
    by median stopping, its processes gone, and it is early-terminated, not failed."""
    sweep = Sweep(example(**{"--epochs": 40, "--samples": 6000}),
                  space={"--learning-rate": choice(0.05, 1e-7)}, sampling="grid",
                  primary_metric="val_loss", goal="minimize", max_total_runs=2,
                  max_concurrent_runs=2,
                  early_termination=MedianStopping(evaluation_interval=1, delay_evaluation=2))
    run = Experiment("sweep-stop").submit(sweep)
    assert run.wait_for_completion()["status"] == "Completed"
    trials = {t["params"]["--learning-rate"]: t for t in run.get_trials()}
    good, bad = trials[0.05], trials[1e-7]
    assert good["status"] == "Completed"
    assert bad["status"] == "EarlyTerminated", bad
    assert "median stopping" in bad["error"]
    bad_run = next(r for r in run.get_children() if r.id == bad["run_id"])
    details = bad_run.get_details()
    assert details["status"] == "Canceled" and details["early_terminated"]
    assert "early-terminated: median stopping" in details["reason"]
    assert len(bad_run.get_metrics()["val_loss"]) < 40  # stopped well before its end
    assert processes_of_run(bad["run_id"]) == []
    assert len(run.get_best_run().get_metrics()["val_loss"]) == 40


def test_an_interrupted_grid_sweep_resumes_without_repeating(workspace):
    """A grid of 6, one trial at a time, killed (runner and trial, kill -9) after 3 trials:
    resumed, it runs the rest, and the grid is covered exactly once."""
    grid = {"--learning-rate": [0.01, 0.03, 0.1], "--batch-size": [32, 64]}
    sweep = Sweep(example(**{"--epochs": 1}), space={k: choice(*v) for k, v in grid.items()},
                  sampling="grid", primary_metric="val_loss", max_total_runs=20,
                  max_concurrent_runs=1)
    run = Experiment("sweep-resume").submit(sweep)
    deadline = time.monotonic() + 600
    while sum(t["status"] == "Completed" for t in run.get_trials()) < 3:
        assert run.get_status() in ("Queued", "Preparing", "Running"), run.get_details()
        assert time.monotonic() < deadline
        time.sleep(0.1)
    first = {t["run_id"]: t for t in run.get_trials() if t["status"] == "Completed"}
    runner = int((run.paths.root / "runner.pid").read_text())
    os.kill(runner, signal.SIGKILL)  # the machine went down, say
    for trial in run.get_trials():
        for pid in processes_of_run(trial["run_id"]):
            os.kill(pid, signal.SIGKILL)
    while pid_alive(runner):
        time.sleep(0.05)
    # The runner died: no "Running" forever. (A child it was starting at that moment may
    # hold the run's lock until it execs: wait for the status, briefly.)
    deadline = time.monotonic() + 30
    while run.get_status() != "Failed":
        assert time.monotonic() < deadline, run.get_details()
        time.sleep(0.1)

    result = run_cli("resume", run.id, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "resuming: " in result.stdout and "already done" in result.stdout
    trials = run.get_trials()
    assert all(t["status"] == "Completed" for t in trials)
    covered = sorted((t["params"]["--learning-rate"], t["params"]["--batch-size"])
                     for t in trials)
    assert covered == sorted(itertools.product(*grid.values()))  # each point exactly once
    for run_id, before in first.items():  # the first three were kept, not run again
        again = next(t for t in trials if t["run_id"] == run_id)
        assert again["finished"] == before["finished"]
    assert run.get_best_run().id == trials[0]["run_id"]


def test_a_failed_trial_does_not_fail_the_sweep_cli(workspace, job_dir, tmp_path):
    """`tfsubmit submit sweep.yaml`: trials that exit 3 are recorded with their error."""
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({
        "experiment": "sweep-fail",
        "estimator": {"source_directory": str(job_dir), "entry_script": "scored.py"},
        "space": {"--exit-code": {"choice": [0, 3]}, "--loss": {"choice": [0.25, 0.5]}},
        "sampling": "grid", "primary_metric": "loss", "max_total_runs": 4,
        "max_concurrent_runs": 2,
    }))
    result = run_cli("submit", str(tmp_path / "sweep.yaml"), timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^\d+\s+Completed\s+0\.25\s+--exit-code=0, --loss=0\.25$", result.stdout,
                     re.MULTILINE), result.stdout
    run = SweepRun(result.stdout.split("Submitted run ", 1)[1].split()[0])
    assert run.get_status() == "Completed"
    trials = run.get_trials()
    failed = [t for t in trials if t["status"] == "Failed"]
    assert len(trials) == 4 and len(failed) == 2
    assert all(t["params"]["--exit-code"] == 3 for t in failed)
    assert all("exit" in t["error"] and "3" in t["error"] for t in failed), failed
    best = run.get_best_run()
    assert best.script_params == {"--exit-code": 0, "--loss": 0.25}
    assert trials[0]["status"] == "Completed" and trials[0]["value"] == 0.25
    # `tfsubmit runs` lists the sweep and its trials from the API.
    listing = run_cli("runs", "--experiment", "sweep-fail").stdout
    assert sum(line.startswith(run.id) for line in listing.splitlines()) == 5, listing


def test_nan_and_inf_never_win_a_sweep(workspace, job_dir):
    """Trials whose primary metric is NaN or infinite complete, are said to be unranked, and
    never come first (under the goal, inf would be the largest and NaN sorts anywhere)."""
    sweep = Sweep(TensorFlow(source_directory=str(job_dir), entry_script="scored.py"),
                  space={"--loss": choice("0.5", "nan", "0.9", "inf")}, sampling="grid",
                  primary_metric="loss", goal="maximize", max_total_runs=4,
                  max_concurrent_runs=2)
    run = Experiment("sweep-nan").submit(sweep)
    assert run.wait_for_completion(timeout=600)["status"] == "Completed"
    trials = run.get_trials()
    assert [t["params"]["--loss"] for t in trials[:2]] == ["0.9", "0.5"]
    assert run.get_best_run().script_params["--loss"] == "0.9"
    unranked = trials[2:]
    assert sorted(t["params"]["--loss"] for t in unranked) == ["inf", "nan"]
    assert all(t["status"] == "Completed" and "not ranked" in t["error"] for t in unranked)
