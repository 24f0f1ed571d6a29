from __future__ import annotations

import time
from pathlib import Path

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tfsubmit.prefect_api import artifact_key
from tfsubmit.process import Node
from tfsubmit.runtime import read_metrics
from tfsubmit.submission import Submission
from tfsubmit.supervisor import Outcome
from tfsubmit.tasks._logging import forwarded


def gather(sub: Submission, nodes: list[Node]) -> list[str]:
    """Bring every node's outputs, logs and metric files into the run folder.

    The primary node's go to the run folder itself, the others' to `hosts/<host>/`.
    Returns the problems met (an unreachable host keeps its files).
    """
    problems = []
    for i, node in enumerate(nodes):
        dest = sub.paths.root if i == 0 else sub.paths.root / "hosts" / node.host
        problems += sub.target.collect(node, dest)
    with sub.paths.metrics.open("a") as merged:
        for path in sub.paths.metric_files():
            merged.write(path.read_text())
    return problems


@task(name="collect_outputs", cache_policy=NO_CACHE)
def collect_outputs(sub: Submission, nodes: list[Node], outcome: Outcome) -> dict:
    """Bring outputs, logs and metrics into the run folder, and publish Prefect artifacts.

    Runs for failed and canceled runs too: nothing the job wrote is lost.

    Args:
        sub: the submission.
        nodes: the nodes the job ran on.
        outcome: what the processes did.

    Returns:
        The run's final record (status, exit code, duration, metrics, outputs).
    """
    with forwarded(sub.log) as log:
        for problem in gather(sub, nodes):
            log.event(f"collecting: {problem}")
        metrics = read_metrics([sub.paths.metrics])
        outputs = sorted(  # gathered before the status changes: readers then see them all
            str(p.relative_to(sub.paths.root)) for p in sub.paths.outputs.rglob("*") if p.is_file()
        )
        exit_codes = {f"{r.role}:{r.index}@{r.host}": r.exit_code for r in outcome.results}
        log.event(f"collected {len(outputs)} output file(s) into {sub.paths.outputs}")
        final = {
            "outcome": outcome.status,  # the runner makes it the status once the flow has ended
            "error": outcome.reason,
            "exit_code": outcome.results[0].exit_code if outcome.results else None,
            "exit_codes": exit_codes,
            "finished": time.time(),
            "duration": round(outcome.duration, 3),
            "outputs": outputs,
        }
        # Artifacts before the record: whoever sees the final status sees everything.
        if sub.artifacts is not None:
            sub.artifacts.publish(metrics, final=True)
        create_markdown_artifact(
            key=artifact_key(sub.run_id, "summary"),
            markdown=_summary({**sub.record(), **final, "status": outcome.status}, metrics),
            description=f"Summary of run {sub.run_id}",
        )
        create_link_artifact(
            key=artifact_key(sub.run_id, "outputs"),
            link=sub.paths.outputs.resolve().as_uri(),
            link_text=f"{len(outputs)} output file(s) in {sub.paths.outputs}",
            description=f"Outputs of run {sub.run_id} (on the machine that ran its flow)",
        )
        log.event(f"run {sub.run_id} {outcome.describe()}")
        record = sub.record(**final)
    return record


def _summary(record: dict, metrics: dict[str, list[float]]) -> str:
    restarts: dict[str, int] = {}
    for restart in record.get("restarts") or []:
        restarts[restart["task"]] = restarts.get(restart["task"], 0) + 1
    lines = [
        f"# Run `{record['id']}`",
        "",
        f"- **Status**: {record['status']} {record.get('error') or ''}",
        f"- **Experiment**: {record.get('experiment')}",
        f"- **Target**: {record.get('compute_target')}",
        f"- **Topology**: {record.get('topology', '-')}",
        f"- **Hosts**: {', '.join(record.get('hosts') or []) or '-'}",
        f"- **Duration**: {record.get('duration', 0):.1f} s (processes)",
        f"- **Snapshot**: `{record.get('snapshot_hash', '-')}`",
        f"- **Environment**: `{record.get('environment_hash', '-')}`"
        + (" (reused)" if record.get("environment_reused") else ""),
        f"- **Outputs**: `{Path(record['workspace']) / 'runs' / record['id'] / 'outputs'}`",
        "",
        "| step | seconds |",
        "| --- | --- |",
        *(f"| {name} | {seconds:.2f} |" for name, seconds in (record.get("steps") or {}).items()),
        "",
        "| process | exit code | restarts |",
        "| --- | --- | --- |",
        *(f"| {name} | {code} | {restarts.get(name, 0)} |"
          for name, code in (record.get("exit_codes") or {}).items()),
    ]
    if record.get("restarts"):
        lines += ["", "| restart | task | exit code | action | reason |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| {r['attempt']} | {r['task']} | {r['exit_code']} | {r['action']} | "
                  f"{r['reason']} |" for r in record["restarts"]]
    if metrics:
        lines += ["", "| metric | last |", "| --- | --- |"]
        lines += [f"| {name} | {values[-1]:.6g} |" for name, values in sorted(metrics.items())]
    return "\n".join(lines)
