from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tfsubmit.pipeline.artifacts import outputs_markdown
from tfsubmit.pipeline.collect import summary_markdown
from tfsubmit.pipeline.context import Submission
from tfsubmit.pipeline.execute import settle
from tfsubmit.pipeline.supervise import Outcome
from tfsubmit.runtime.metrics import json_safe, series
from tfsubmit.service.prefect_api import artifact_key
from tfsubmit.spec.process import Node
from tfsubmit.targets.base import Target
from tfsubmit.tasks._kept import kept
from tfsubmit.tasks._logging import forwarded
from tfsubmit.tasks.progress import RunArtifacts, publish_images


@task(name="collect_outputs", cache_policy=NO_CACHE)
@kept("collect_outputs")
def collect_outputs(sub: Submission, target: Target | None, nodes: list[Node],
                    outcome: Outcome, artifacts: RunArtifacts) -> dict:
    """Bring outputs, logs and metrics into the run folder, and publish Prefect artifacts.

    Runs for failed and canceled runs too: nothing the job wrote is lost.

    Args:
        sub: the submission.
        target: the target the nodes belong to (None when it could not be reached).
        nodes: the nodes the job ran on.
        outcome: what the processes did.
        artifacts: the run's live artifacts, given their final values here.

    Returns:
        The run's record with its outcome settled (exit codes, duration, outputs).
    """
    with forwarded(sub.log):
        return settle(sub, target, nodes, outcome, publish=lambda metrics, final, done:
                      _publish(sub, artifacts, metrics, final, done))


def _publish(sub: Submission, artifacts: RunArtifacts, metrics: list[dict], final: dict,
             outcome: Outcome) -> None:
    artifacts.publish(metrics, final=True)
    publish_images(sub.run_id, sub.paths.root, metrics)
    create_markdown_artifact(
        key=artifact_key(sub.run_id, "summary"),
        markdown=json_safe(summary_markdown(
            {**sub.record.read(), **final, "status": outcome.status}, series(metrics))),
        description=f"Summary of run {sub.run_id}",
    )
    create_markdown_artifact(
        key=artifact_key(sub.run_id, "outputs"),
        markdown=json_safe(outputs_markdown(sub.run_id, sub.paths.root, final["outputs"])),
        description=f"Outputs of run {sub.run_id}: files, sizes, and how to download them",
    )
