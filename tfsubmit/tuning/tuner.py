"""The tuner: trials of a sweep sampled by Optuna, run through an injected `run_trial`.

Optuna samples each trial's values (the study lives in the sweep's run folder, so a sweep
resumes after an interruption); at most `max_concurrent_runs` trials run at once. While they
run, the tuner reads their metric files, reports the primary metric to the study and applies
the early-termination policy: a trial it stops is canceled (through its cancel file) and
recorded as early-terminated. A failed trial is recorded with its error; the sweep goes on.
No Prefect here: the sweep flow hands in a `run_trial` that runs a child flow run.
"""

from __future__ import annotations

import contextvars
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from tfsubmit.runtime.metrics import read_metrics
from tfsubmit.spec.goals import ranked
from tfsubmit.spec.job import TrainingJob
from tfsubmit.spec.sweep import Choice, RandInt, Sweep, Transformed
from tfsubmit.store.cancel import CancelFlag, request_cancel
from tfsubmit.store.layout import RunPaths, Workspace
from tfsubmit.store.record import RunRecord
from tfsubmit.store.runlog import RunLog

# Runs one trial (a run of the sweep's experiment, already created) to its end.
RunTrial = Callable[[str, TrainingJob], None]

POLL_SECONDS = 0.5
TRIAL_STATUSES = ("Completed", "EarlyTerminated", "Failed", "Canceled")


@dataclass
class Trial:
    number: int
    run_id: str
    params: dict[str, Any]
    optuna_trial: Any
    thread: threading.Thread | None = None
    reported: int = 0
    stop_reason: str | None = None
    status: str = "Running"
    value: float | None = None
    error: str | None = None
    started: float = field(default_factory=time.time)
    finished: float | None = None
    curve: list[float] | None = None  # the primary metric's values, once finished

    def row(self) -> dict[str, Any]:
        return {"trial": self.number, "run_id": self.run_id, "params": self.params,
                "status": self.status, "value": self.value, "error": self.error,
                "started": self.started, "finished": self.finished,
                "duration": round((self.finished or time.time()) - self.started, 3)}


def _distributions(spec: Sweep) -> dict[str, Any]:
    out = {}
    for name, parameter in spec.space.items():
        if isinstance(parameter, Choice):
            out[name] = CategoricalDistribution(list(parameter.values))
        elif isinstance(parameter, Transformed):  # its latent value (Sweep.values_of)
            out[name] = FloatDistribution(0.0, 1.0)
        elif isinstance(parameter, RandInt):
            out[name] = IntDistribution(int(parameter.low), int(parameter.high))
        else:
            out[name] = FloatDistribution(parameter.low, parameter.high, log=parameter.log)
    return out


def _sampler(spec: Sweep, seed: int | None) -> optuna.samplers.BaseSampler:
    if spec.sampling == "grid":
        return optuna.samplers.GridSampler(spec.grid, seed=seed)
    if spec.sampling == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    startup = max(2, min(10, spec.total_runs // 3))  # random first, then TPE's model
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)


def open_study(paths: RunPaths, spec: Sweep) -> optuna.Study:
    """The sweep's study, created or loaded from `<run>/study.journal`."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(paths.study)))
    direction = "minimize" if spec.goal == "minimize" else "maximize"
    study = optuna.create_study(study_name="sweep", storage=storage, direction=direction,
                                load_if_exists=True)
    # Resumed with a seed: continue the sequence instead of drawing the same values again.
    seed = None if spec.seed is None else spec.seed + len(study.trials)
    study.sampler = _sampler(spec, seed)
    return study


class Tuner:
    """Runs the trials of one sweep, within its budget and concurrency limit.

    `run_trial(run_id, job)` runs one trial to its end (the sweep flow makes it a child flow
    run of `submit-training`; tests give a plain function). Each call gets its own thread,
    in a copy of the tuner's context (so a Prefect child flow run finds its parent).
    """

    def __init__(self, spec: Sweep, study: optuna.Study, ws: Workspace, paths: RunPaths,
                 experiment: str, sweep_id: str, log: RunLog, run_trial: RunTrial) -> None:
        self.spec = spec
        self.study = study
        self.ws = ws
        self.paths = paths
        self.experiment = experiment
        self.sweep_id = sweep_id
        self.log = log
        self.run_trial = run_trial
        self.record = RunRecord(paths)
        self.cancel = CancelFlag(paths)
        self.trials: dict[int, Trial] = {}
        self.running: list[Trial] = []
        self.distributions = _distributions(spec)
        self.stopped_by: str | None = None  # why run() stopped before the budget was spent
        self._load_finished()

    # -- resuming ------------------------------------------------------------------------------

    def _load_finished(self) -> None:
        """Trials of an earlier, interrupted process of this sweep: finished ones count;
        ones that were running are re-queued with the same values."""
        known = {row["trial"]: row for row in self.record.read().get("trials", [])}
        for frozen in self.study.get_trials(deepcopy=False):
            row = known.get(frozen.number)
            if frozen.state == TrialState.RUNNING:
                # Marked before it is told: a finished trial's attributes cannot change.
                self.study._storage.set_trial_user_attr(frozen._trial_id, "interrupted", True)
                self.study.tell(frozen.number, state=TrialState.FAIL)
                self.study.enqueue_trial(frozen.params)
                if row:
                    RunRecord(self.ws.run_paths(row["run_id"])).failed(
                        "interrupted: the sweep stopped while it ran; re-queued")
                self.log.event(f"trial {frozen.number} was interrupted; re-queued with "
                               f"{frozen.params}")
            elif frozen.state.is_finished() and not frozen.user_attrs.get("interrupted") \
                    and row:
                trial = Trial(frozen.number, row["run_id"], row["params"], None,
                              status=row["status"], value=row["value"], error=row["error"],
                              started=row["started"], finished=row["finished"])
                trial.curve = self._values(trial)
                trial.reported = len(trial.curve)
                self.trials[frozen.number] = trial
        if self.trials:
            self.log.event(f"resuming: {len(self.trials)} trial(s) already done, "
                           f"{self.spec.total_runs - len(self.trials)} to go")

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> bool:
        """Run trials until the budget is spent; False when the sweep was canceled or ran
        out of its max_duration_seconds (counted from this process's start, so a resumed
        sweep has the whole limit again), with the reason in stopped_by."""
        limit = self.spec.max_duration_seconds
        deadline = None if limit is None else time.monotonic() + limit
        while True:
            if self.cancel.is_set():
                self._stop_all("canceled: the sweep was canceled")
                self.stopped_by = "canceled by the user"
                return False
            if deadline is not None and time.monotonic() > deadline:
                left = self.spec.total_runs - len(self.trials)
                self.stopped_by = (
                    f"stopped: the sweep reached its max_duration_seconds ({limit:g} s) with "
                    f"{len(self.running)} trial(s) running and {left} not started; "
                    "run.resume() goes on with the trials left")
                self.log.event(self.stopped_by)
                self._stop_all(f"canceled: the sweep reached its max_duration_seconds "
                               f"({limit:g} s)")
                return False
            while len(self.running) < self.spec.max_concurrent_runs and \
                    len(self.trials) < self.spec.total_runs:
                self._start_trial()
            if not self.running:
                return True
            self._watch()
            self._reap()
            time.sleep(POLL_SECONDS)

    def _start_trial(self) -> None:
        optuna_trial = self.study.ask(self.distributions)
        params = self.spec.values_of(dict(optuna_trial.params))
        job = self.spec.trial_job(params)
        run_id = f"{self.sweep_id}_t{optuna_trial.number:03d}"
        record = RunRecord.create(self.ws, run_id, self.experiment, job.to_dict(),
                                  parent=self.sweep_id, trial=optuna_trial.number, params=params)
        trial = Trial(optuna_trial.number, run_id, params, optuna_trial)
        context = contextvars.copy_context()  # the sweep's flow run: trials become its children
        trial.thread = threading.Thread(target=context.run, args=(self._run, trial, job, record),
                                        name=f"trial-{trial.number}", daemon=True)
        self.trials[trial.number] = trial
        self.running.append(trial)
        self.log.event(f"trial {trial.number} ({run_id}) started: "
                       + ", ".join(f"{k}={v}" for k, v in params.items()))
        trial.thread.start()
        self._save()

    def _run(self, trial: Trial, job: TrainingJob, record: RunRecord) -> None:
        """Run the trial in this (the sweep's) process, which holds its runner lock."""
        try:
            self.run_trial(trial.run_id, job)
        except BaseException:  # recorded by the reaper from the trial's run record
            self.log.event(f"trial {trial.number}: {traceback.format_exc()}")
        finally:
            record.release_lock()

    def _values(self, trial: Trial) -> list[float]:
        """The primary metric as the trial has logged it so far (live while it runs)."""
        if trial.curve is not None:
            return trial.curve
        metrics = read_metrics(self.ws.paths_of(trial.run_id).metric_files())
        return metrics.get(self.spec.primary_metric, [])

    def _watch(self) -> None:
        """Report new values to the study; stop trials the policy says are done for."""
        curves = {number: self._values(t) for number, t in self.trials.items()
                  if t.status != "Failed"}
        for trial in self.running:
            values = curves.get(trial.number, [])
            others = [curve for number, curve in curves.items() if number != trial.number]
            for step in range(trial.reported + 1, len(values) + 1):
                trial.optuna_trial.report(values[step - 1], step)
            trial.reported = max(trial.reported, len(values))
            policy = self.spec.early_termination
            verdict = policy and values and trial.stop_reason is None and \
                policy.verdict(values, others, self.spec.goal)
            if verdict:
                trial.stop_reason = f"early-terminated: {verdict}"
                request_cancel(self.ws.paths_of(trial.run_id), trial.stop_reason)
                self.log.event(f"trial {trial.number} {trial.stop_reason}")

    def _reap(self) -> None:
        for trial in [t for t in self.running if not t.thread.is_alive()]:
            self.running.remove(trial)
            self._finish(trial)
        self._save()

    def _finish(self, trial: Trial) -> None:
        record = RunRecord(self.ws.paths_of(trial.run_id)).read()
        status = record.get("status")
        values = trial.curve = self._values(trial)
        trial.finished = time.time()
        trial.value = values[-1] if values else None
        if status == "Canceled" and trial.stop_reason:
            trial.status, trial.error = "EarlyTerminated", trial.stop_reason
            RunRecord(self.ws.run_paths(trial.run_id)).note(early_terminated=True)
            self._tell(trial, state=TrialState.PRUNED)
        elif status == "Completed" and trial.value is not None:
            trial.status = "Completed"
            if ranked(trial.value):
                self._tell(trial, trial.value)
            else:  # completed, and said to be unranked: it never wins
                trial.error = (f"its {self.spec.primary_metric} is {trial.value}: not ranked "
                               "(NaN and infinite values never win)")
                self._tell(trial, state=TrialState.FAIL)
        else:
            trial.status = "Canceled" if status == "Canceled" else "Failed"
            trial.error = record.get("error") or (
                f"logged no {self.spec.primary_metric!r}" if status == "Completed"
                else "the trial ended without a status")
            self._tell(trial, state=TrialState.FAIL)
        shown = "-" if trial.value is None else f"{trial.value:.6g}"
        self.log.event(f"trial {trial.number} {trial.status}: {self.spec.primary_metric} "
                       f"{shown}" + (f" ({trial.error})" if trial.error else ""))

    def _tell(self, trial: Trial, value: float | None = None, **state) -> None:
        try:
            self.study.tell(trial.optuna_trial, value, **state)
        except RuntimeError as exc:
            # GridSampler calls Study.stop() once the grid is done, which Optuna allows only
            # inside optimize(); the trial's result is stored all the same (Optuna stores it
            # in a `finally` after the sampler's after_trial).
            if "Study.stop" not in str(exc):
                raise
        except KeyError as exc:
            # GridSampler's after_trial reads the finished trial's grid_id, which a re-queued
            # trial (enqueued with its fixed values after an interruption) has not; stored
            # all the same, as above.
            if exc.args != ("grid_id",):
                raise

    def _stop_all(self, reason: str) -> None:
        for trial in self.running:
            request_cancel(self.ws.paths_of(trial.run_id), reason)
        for trial in list(self.running):
            trial.thread.join(timeout=120)
        self._reap()

    def _save(self) -> None:
        best = self.best()
        self.record.note(trials=[t.row() for t in self.ordered()],
                         best_trial=best.run_id if best else None)

    # -- results -------------------------------------------------------------------------------

    def ordered(self) -> list[Trial]:
        """Best first: completed trials with a finite value by the goal, then the others
        (completed with NaN or an infinity, failed, stopped) by trial number."""
        sign = 1 if self.spec.goal == "minimize" else -1
        done = sorted((t for t in self.trials.values() if self._ranked(t)),
                      key=lambda t: sign * t.value)
        rest = sorted((t for t in self.trials.values() if not self._ranked(t)),
                      key=lambda t: t.number)
        return done + rest

    def best(self) -> Trial | None:
        done = [t for t in self.ordered() if self._ranked(t)]
        return done[0] if done else None

    @staticmethod
    def _ranked(trial: Trial) -> bool:
        return trial.status == "Completed" and ranked(trial.value)
