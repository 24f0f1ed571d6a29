"""The `retrain` flow: train again, and promote the model only when it beats every earlier run.

Meant for a schedule (see deployments/prefect.yaml): each run trains the job as a child flow
run of `submit-training`, reads the chosen metric's final value, compares it with the best
final value among the experiment's earlier completed runs, and, when it is strictly better,
copies the run's outputs into the registry as `models/<experiment>/<version>/`.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from tfsubmit.errors import TfsubmitError
from tfsubmit.flows.serve import deploy_model
from tfsubmit.flows.submit import submit_training
from tfsubmit.service.prefect_api import artifact_key
from tfsubmit.serving.endpoints import Endpoints
from tfsubmit.spec.goals import better, check_goal
from tfsubmit.spec.job import TrainingJob, load_job_file, validate_experiment_name
from tfsubmit.store.layout import Workspace
from tfsubmit.store.record import RunRecord
from tfsubmit.store.registry import ModelRegistry, best_earlier, last_values


def _job_with(job: dict[str, Any] | str, script_params: dict[str, Any] | None
              ) -> tuple[dict[str, Any], str | None]:
    if isinstance(job, str):
        spec, experiment = load_job_file(job)
    else:
        spec, experiment = TrainingJob.from_dict(job), None
    data = spec.to_dict()
    if script_params:
        if not isinstance(data["script_params"], dict):
            raise TfsubmitError("script_params: the job's script_params are a list; overrides "
                                "need them as a mapping")
        data["script_params"] = {**data["script_params"], **script_params}
        TrainingJob.from_dict(data)  # the overrides must still make a valid job
    return data, experiment


@flow(name="retrain", log_prints=True)
def retrain(
    job: dict[str, Any] | str,
    experiment: str | None = None,
    metric: str = "val_loss",
    goal: str = "minimize",
    script_params: dict[str, Any] | None = None,
    workspace: str | None = None,
    endpoint: str | None = None,
) -> dict[str, Any]:
    """Train `job`; promote its outputs to the model registry if `metric` improved.

    Args:
        job: the job spec as a mapping, or the path of a job YAML file.
        experiment: experiment name (default: the YAML's `experiment`, else "default").
        metric: the metric to compare (its last logged value counts).
        goal: "minimize" or "maximize".
        script_params: overrides merged into the job's script_params.
        workspace: the workspace folder (default: TFSUBMIT_WORKSPACE or ~/.tfsubmit).
        endpoint: an endpoint (`tfsubmit endpoints`) to update to a promoted model (a
            `deploy-model` child flow run; no request is refused while it switches).

    Returns:
        The decision: run id, value, the best earlier run, promoted or not, version.
    """
    log = get_run_logger()
    check_goal(goal)
    data, file_experiment = _job_with(job, script_params)
    experiment = validate_experiment_name(experiment or file_experiment or "default")
    ws = Workspace(workspace)
    if endpoint:
        Endpoints(ws).config(endpoint)  # one that does not exist fails before training
    run_id = ws.new_run_id(experiment)
    state = submit_training(job=data, experiment=experiment, run_id=run_id,
                            workspace=str(ws.root), return_state=True)
    record = RunRecord(ws.paths_of(run_id)).read()
    if not state.is_completed():
        raise TfsubmitError(f"training run {run_id} {record.get('status', 'failed')}: "
                            f"{record.get('error') or state.message}; nothing promoted")
    latest = last_values(ws, run_id)
    value = latest.get(metric)
    if value is None:
        raise TfsubmitError(f"metric: run {run_id} logged no {metric!r} (it logged: "
                            f"{', '.join(sorted(latest)) or 'nothing'}); nothing promoted")
    earlier = best_earlier(ws, experiment, metric, goal, exclude=run_id)
    decision: dict[str, Any] = {
        "run_id": run_id, "experiment": experiment, "metric": metric, "goal": goal,
        "value": value, "best_earlier_run": earlier and earlier[0],
        "best_earlier_value": earlier and earlier[1], "promoted": False, "version": None,
    }
    if better(value, earlier and earlier[1], goal):
        info = ModelRegistry(ws).promote(
            experiment, run_id=run_id, outputs=ws.paths_of(run_id).outputs, metric=metric,
            value=value, goal=goal, metrics=latest, flow_run_id=str(flow_run.id),
            job={key: data[key] for key in ("framework_version", "pip_packages", "use_gpu")
                 if key in data})
        decision.update(promoted=True, version=info["version"])
        log.info(f"promoted run {run_id} as {experiment} version {info['version']}: {metric} "
                 f"{value:.6g} beats {_earlier_text(earlier)}")
        if endpoint:
            serving = Endpoints(ws).plan_update(endpoint, f"{experiment}:{info['version']}")
            state = deploy_model(endpoint=endpoint, version=serving, workspace=str(ws.root))
            decision["endpoint"] = {"name": endpoint, "model": state["model"],
                                    "scoring_uri": state["scoring_uri"]}
            log.info(f"endpoint {endpoint} now serves {state['model']}")
    else:
        side = "below" if goal == "minimize" else "above"
        log.info(f"kept the current model: run {run_id} {metric} {value:.6g} is not {side} "
                 f"{_earlier_text(earlier)}")
    create_markdown_artifact(
        key=artifact_key(f"retrain-{experiment}", "decision"),
        markdown=_decision_markdown(decision, ws),
        description=f"Retrain decision for {experiment}",
    )
    return decision


def _earlier_text(earlier: tuple[str, float] | None) -> str:
    return f"{earlier[1]:.6g} (run {earlier[0]})" if earlier else "no earlier run"


def _decision_markdown(decision: dict[str, Any], ws: Workspace) -> str:
    folder = ModelRegistry(ws).path(decision["experiment"], decision["version"] or 0)
    verdict = (f"**Promoted** as version {decision['version']} (`{folder}`)"
               if decision["promoted"]
               else "**Not promoted**: not better than the best earlier run")
    return "\n".join([
        f"# Retrain `{decision['experiment']}`",
        "",
        verdict,
        "",
        "| run | metric | value |",
        "| --- | --- | --- |",
        f"| {decision['run_id']} (new) | {decision['metric']} | {decision['value']:.6g} |",
        f"| {decision['best_earlier_run'] or '-'} (best earlier) | {decision['metric']} | "
        + (f"{decision['best_earlier_value']:.6g} |" if decision["best_earlier_run"] else "- |"),
    ])
