"""The `sweep` flow: trials of a hyperparameter sweep as child flow runs of `submit-training`.

Optuna samples each trial's values (the study lives in the sweep's run folder, so a sweep
resumes after an interruption); at most `max_concurrent_runs` trials run at once, each a
`submit_training` subflow in its own thread. While they run, the sweep reads their metric
files, reports the primary metric to the study and applies the early-termination policy:
a trial it stops is canceled (its processes stopped, its logs kept) and recorded as
early-terminated. A failed trial is recorded with its error; the sweep goes on.
"""

from __future__ import annotations

import base64
import contextvars
import io
import os
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run
from prefect.states import Cancelled, Completed, Failed, State

from tfsubmit.flows.submit import _flow_run_name, _label_flow_run, submit_training
from tfsubmit.prefect_api import artifact_key
from tfsubmit.runlog import RunLog
from tfsubmit.runtime import read_metrics
from tfsubmit.submission import CancelFlag
from tfsubmit.tuning import Choice, RandInt, Sweep
from tfsubmit.workspace import RunPaths, Workspace, read_json, update_record

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
    storage = JournalStorage(JournalFileBackend(str(paths.root / "study.journal")))
    direction = "minimize" if spec.goal == "minimize" else "maximize"
    study = optuna.create_study(study_name="sweep", storage=storage, direction=direction,
                                load_if_exists=True)
    # Resumed with a seed: continue the sequence instead of drawing the same values again.
    seed = None if spec.seed is None else spec.seed + len(study.trials)
    study.sampler = _sampler(spec, seed)
    return study


class Tuner:
    """Runs the trials of one sweep, within its budget and concurrency limit."""

    def __init__(self, spec: Sweep, study: optuna.Study, ws: Workspace, paths: RunPaths,
                 experiment: str, sweep_id: str, log: RunLog) -> None:
        self.spec = spec
        self.study = study
        self.ws = ws
        self.paths = paths
        self.experiment = experiment
        self.sweep_id = sweep_id
        self.log = log
        self.cancel = CancelFlag(paths.root / "cancel.requested")
        self.trials: dict[int, Trial] = {}
        self.running: list[Trial] = []
        self.distributions = _distributions(spec)
        self._load_finished()

    # -- resuming ------------------------------------------------------------------------------

    def _load_finished(self) -> None:
        """Trials of an earlier, interrupted process of this sweep: finished ones count;
        ones that were running are re-queued with the same values."""
        known = {row["trial"]: row for row in (read_json(self.paths.record) or {}).get(
            "trials", [])}
        for frozen in self.study.get_trials(deepcopy=False):
            row = known.get(frozen.number)
            if frozen.state == TrialState.RUNNING:
                self.study.tell(frozen.number, state=TrialState.FAIL)
                self.study._storage.set_trial_user_attr(frozen._trial_id, "interrupted", True)
                self.study.enqueue_trial(frozen.params)
                if row:
                    update_record(self.ws.run_paths(row["run_id"]), status="Failed",
                                  error="interrupted: the sweep stopped while it ran; "
                                  "re-queued")
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
        """Run trials until the budget is spent; False when the sweep was canceled."""
        while True:
            if self.cancel.is_set():
                self._stop_all("canceled: the sweep was canceled")
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
        params = dict(optuna_trial.params)
        job = self.spec.trial_job(params)
        run_id = f"{self.sweep_id}_t{optuna_trial.number:03d}"
        paths = self.ws.create_run(run_id, self.experiment, job.to_dict())
        update_record(paths, parent=self.sweep_id, trial=optuna_trial.number, params=params)
        trial = Trial(optuna_trial.number, run_id, params, optuna_trial)
        context = contextvars.copy_context()  # the sweep's flow run: trials become its children
        trial.thread = threading.Thread(target=context.run, args=(self._trial_flow, trial, job),
                                        name=f"trial-{trial.number}", daemon=True)
        self.trials[trial.number] = trial
        self.running.append(trial)
        self.log.event(f"trial {trial.number} ({run_id}) started: "
                       + ", ".join(f"{k}={v}" for k, v in params.items()))
        trial.thread.start()
        self._save()

    def _trial_flow(self, trial: Trial, job) -> None:
        try:
            submit_training(job=job.to_dict(), experiment=self.experiment, run_id=trial.run_id,
                            workspace=str(self.ws.root), return_state=True)
        except BaseException:  # recorded by the reaper from the trial's run record
            self.log.event(f"trial {trial.number}: {traceback.format_exc()}")

    def _values(self, trial: Trial) -> list[float]:
        """The primary metric as the trial has logged it so far (live while it runs)."""
        if trial.curve is not None:
            return trial.curve
        metrics = read_metrics(RunPaths(self.ws.runs / trial.run_id).metric_files())
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
                (self.ws.runs / trial.run_id / "cancel.requested").write_text(trial.stop_reason)
                self.log.event(f"trial {trial.number} {trial.stop_reason}")

    def _reap(self) -> None:
        for trial in [t for t in self.running if not t.thread.is_alive()]:
            self.running.remove(trial)
            self._finish(trial)
        self._save()

    def _finish(self, trial: Trial) -> None:
        record = read_json(self.ws.runs / trial.run_id / "run.json") or {}
        status = record.get("status")
        values = trial.curve = self._values(trial)
        trial.finished = time.time()
        trial.value = values[-1] if values else None
        if status == "Canceled" and trial.stop_reason:
            trial.status, trial.error = "EarlyTerminated", trial.stop_reason
            update_record(self.ws.run_paths(trial.run_id), early_terminated=True)
            self._tell(trial, state=TrialState.PRUNED)
        elif status == "Completed" and trial.value is not None:
            trial.status = "Completed"
            self._tell(trial, trial.value)
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
            # inside optimize(); the trial's result is stored all the same.
            if "Study.stop" not in str(exc):
                raise

    def _stop_all(self, reason: str) -> None:
        for trial in self.running:
            (self.ws.runs / trial.run_id / "cancel.requested").write_text(reason)
        for trial in list(self.running):
            trial.thread.join(timeout=120)
        self._reap()

    def _save(self) -> None:
        best = self.best()
        update_record(self.paths, trials=[t.row() for t in self.ordered()],
                      best_trial=best.run_id if best else None)

    # -- results -------------------------------------------------------------------------------

    def ordered(self) -> list[Trial]:
        """Best first: completed trials by the goal, then the others by trial number."""
        sign = 1 if self.spec.goal == "minimize" else -1
        done = sorted((t for t in self.trials.values() if t.status == "Completed"),
                      key=lambda t: sign * t.value)
        rest = sorted((t for t in self.trials.values() if t.status != "Completed"),
                      key=lambda t: t.number)
        return done + rest

    def best(self) -> Trial | None:
        done = [t for t in self.ordered() if t.status == "Completed"]
        return done[0] if done else None


# -- the summary --------------------------------------------------------------------------------


def _plot(tuner: Tuner) -> bytes | None:
    """A PNG of the primary metric per trial (colour by status)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trials = sorted(tuner.trials.values(), key=lambda t: t.number)
    if not any(t.value is not None for t in trials):
        return None
    colours = {"Completed": "tab:blue", "EarlyTerminated": "tab:orange", "Failed": "tab:red",
               "Canceled": "tab:gray"}
    figure, axes = plt.subplots(figsize=(6, 3.2), dpi=100)
    for status, colour in colours.items():
        shown = [t for t in trials if t.status == status and t.value is not None]
        if shown:
            axes.scatter([t.number for t in shown], [t.value for t in shown], color=colour,
                         label=status)
    best = tuner.best()
    if best:
        axes.axhline(best.value, color="tab:green", linestyle="--", linewidth=1,
                     label=f"best (trial {best.number})")
    axes.set_xlabel("trial")
    axes.set_ylabel(f"{tuner.spec.primary_metric} (last value)")
    axes.set_title(f"{tuner.spec.primary_metric} per trial ({tuner.spec.goal})")
    axes.legend(fontsize=7)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def publish_summary(tuner: Tuner) -> None:
    spec = tuner.spec
    rows = [{"trial": t.number, "run": t.run_id,
             **{name: t.params.get(name) for name in spec.space},
             spec.primary_metric: t.value, "status": t.status,
             "duration_s": round((t.finished or time.time()) - t.started, 1),
             "error": t.error or ""} for t in tuner.ordered()]
    create_table_artifact(key=artifact_key(tuner.sweep_id, "trials"), table=rows,
                          description=f"Trials of sweep {tuner.sweep_id}, best first")
    png = _plot(tuner)
    image = ""
    if png:
        tuner.paths.outputs.mkdir(exist_ok=True)
        (tuner.paths.outputs / "trials.png").write_bytes(png)
        image = (f"![{spec.primary_metric} per trial](data:image/png;base64,"
                 f"{base64.b64encode(png).decode()})")
    best = tuner.best()
    header = [name for name in rows[0] if name != "error"] if rows else []
    lines = [
        f"# Sweep `{tuner.sweep_id}`",
        "",
        f"- **Sampling**: {spec.sampling}; **primary metric**: {spec.primary_metric} "
        f"({spec.goal}); **trials**: {len(tuner.trials)} of {spec.total_runs}, at most "
        f"{spec.max_concurrent_runs} at once",
        f"- **Best**: trial {best.number} (`{best.run_id}`), {spec.primary_metric} "
        f"{best.value:.6g}, {best.params}" if best else "- **Best**: no trial completed",
        "",
        image,
        "",
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
        *("| " + " | ".join("-" if row[h] is None else str(row[h]) for h in header) + " |"
          for row in rows),
    ]
    create_markdown_artifact(key=artifact_key(tuner.sweep_id, "summary"),
                             markdown="\n".join(lines),
                             description=f"Summary of sweep {tuner.sweep_id}")


@flow(name="sweep", flow_run_name=_flow_run_name, log_prints=False)
def run_sweep(sweep: dict[str, Any], experiment: str, run_id: str,
              workspace: str | None = None) -> State:
    """Run (or resume) the sweep whose run folder `run_id` Experiment.submit made.

    Args:
        sweep: the sweep spec (Sweep.to_dict()).
        experiment: the experiment of the sweep and its trials.
        run_id: the sweep's run id (its folder holds the study and the trial table).
        workspace: the workspace folder (default: TFSUBMIT_WORKSPACE or ~/.tfsubmit).
    """
    ws = Workspace(workspace)
    paths = ws.run_paths(run_id)
    log = RunLog(paths.output_log, forward=get_run_logger().info)
    _label_flow_run(run_id, experiment)
    update_record(paths, status="Running", flow_run_id=str(flow_run.id),
                  prefect_api_url=os.environ.get("PREFECT_API_URL"), started=time.time())
    outcome, error = "Failed", None
    tuner = None
    try:
        spec = Sweep.from_dict(sweep)
        tuner = Tuner(spec, open_study(paths, spec), ws, paths, experiment, run_id, log)
        log.event(f"sweep {run_id}: {spec.sampling} sampling, {spec.total_runs} trial(s), at "
                  f"most {spec.max_concurrent_runs} at once, {spec.primary_metric} "
                  f"({spec.goal})")
        finished = tuner.run()
        outcome = "Completed" if finished else "Canceled"
        error = None if finished else "canceled by the user"
        best = tuner.best()
        log.event(f"sweep {run_id} {outcome}: " + (
            f"best trial {best.number} ({best.run_id}) {spec.primary_metric} {best.value:.6g} "
            f"with {best.params}" if best else "no trial completed"))
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        log.event("sweep failed:\n" + traceback.format_exc())
    finally:
        if tuner is not None:
            publish_summary(tuner)
        record = update_record(paths, outcome=outcome, error=error, finished=time.time())
        if os.environ.get("TFSUBMIT_RUNNER_OF") != run_id:
            update_record(paths, status=outcome)
        log.close()
    if record["outcome"] == "Completed":
        return Completed(message="sweep completed")
    if record["outcome"] == "Canceled":
        return Cancelled(message=error or "canceled")
    return Failed(message=error or "failed")
