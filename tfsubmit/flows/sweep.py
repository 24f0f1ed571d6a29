"""The `sweep` flow: a sweep's trials as child flow runs of `submit-training` (wiring only;
the tuner in tfsubmit.tuning does the work)."""

from __future__ import annotations

import os
import time
import traceback
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run
from prefect.states import State

from tfsubmit.flows.common import flow_run_name, label_flow_run, prefect_state
from tfsubmit.flows.submit import submit_training, take_hand_over
from tfsubmit.pipeline.context import take_run
from tfsubmit.service.prefect_api import artifact_key
from tfsubmit.spec.job import TrainingJob
from tfsubmit.spec.sweep import Sweep
from tfsubmit.store.layout import Workspace, read_json, read_record
from tfsubmit.store.record import CANCELED, COMPLETED, FAILED
from tfsubmit.store.runlog import RunLog
from tfsubmit.tuning.report import plot_png, summary_markdown, trial_rows
from tfsubmit.tuning.tuner import Tuner, open_study


def publish_summary(tuner: Tuner) -> None:
    """The trials table and the markdown summary (with its plot) as artifacts of the sweep's
    flow run; the plot also goes to the sweep's outputs/trials.png."""
    rows = trial_rows(tuner)
    create_table_artifact(key=artifact_key(tuner.sweep_id, "trials"), table=rows,
                          description=f"Trials of sweep {tuner.sweep_id}, best first")
    png = plot_png(tuner)
    if png:
        tuner.paths.outputs.mkdir(exist_ok=True)
        (tuner.paths.outputs / "trials.png").write_bytes(png)
    create_markdown_artifact(key=artifact_key(tuner.sweep_id, "summary"),
                             markdown=summary_markdown(tuner, rows, png),
                             description=f"Summary of sweep {tuner.sweep_id}")


@flow(name="sweep", flow_run_name=flow_run_name, log_prints=False)
def run_sweep(run_id: str, workspace: str | None = None, sweep: dict[str, Any] | None = None,
              experiment: str | None = None) -> State:
    """Run (or resume) the sweep whose run folder `run_id` Experiment.submit made.

    Args:
        run_id: the sweep's run id (its folder holds the spec, the study and the trials).
        workspace: the workspace folder (default: TFSUBMIT_WORKSPACE or ~/.tfsubmit).
        sweep: the sweep spec (Sweep.to_dict()); default: the one in the run folder.
        experiment: the experiment of the sweep and its trials; default: the run's.
    """
    ws = Workspace(workspace)
    take_hand_over(run_id)
    record = take_run(ws, run_id, attempt=1)  # a sweep goes on with `resume`, never retried
    if record is None:  # it ended before its flow run started (canceled while queued)
        return prefect_state(read_record(ws.run_paths(run_id).record), "sweep")
    paths = record.paths
    sweep = sweep or read_json(paths.job)
    experiment = experiment or record.read().get("experiment") or "default"
    log = RunLog(paths.output_log, forward=get_run_logger().info)
    label_flow_run(run_id, experiment)
    record.running(flow_run_id=str(flow_run.id),
                   prefect_api_url=os.environ.get("PREFECT_API_URL"), started=time.time())

    def run_trial(trial_run_id: str, job: TrainingJob) -> None:
        submit_training(job=job.to_dict(), experiment=experiment, run_id=trial_run_id,
                        workspace=str(ws.root), return_state=True)

    outcome, error = FAILED, None
    tuner = None
    try:
        spec = Sweep.from_dict(sweep)
        tuner = Tuner(spec, open_study(paths, spec), ws, paths, experiment, run_id, log,
                      run_trial=run_trial)
        log.event(f"sweep {run_id}: {spec.sampling} sampling, {spec.total_runs} trial(s), at "
                  f"most {spec.max_concurrent_runs} at once, {spec.primary_metric} "
                  f"({spec.goal})")
        finished = tuner.run()
        outcome = COMPLETED if finished else CANCELED
        error = tuner.stopped_by
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
        settled = record.settle(outcome, error=error, finished=time.time())
        record.end()
        record.release_lock()
        log.close()
    return prefect_state(settled, "sweep")
