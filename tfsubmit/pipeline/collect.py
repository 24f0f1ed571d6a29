"""Step 5, collect: every node's outputs, logs and metrics into the run folder, and the
run's final facts. Runs for failed and canceled runs too: nothing the job wrote is lost."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from tfsubmit.pipeline.context import Submission
from tfsubmit.pipeline.failure import explain, with_exception
from tfsubmit.pipeline.supervise import Outcome
from tfsubmit.runtime.metrics import IMAGES_DIR, METRICS_DIR
from tfsubmit.spec.process import Node
from tfsubmit.store.layout import RunPaths
from tfsubmit.targets.base import Target


def gather(paths: RunPaths, target: Target | None, nodes: list[Node]) -> list[str]:
    """Bring every node's outputs, logs and metric files into the run folder.

    The primary node's go to the run folder itself, the others' to `hosts/<host>/`.
    Returns the problems met (an unreachable host keeps its files).
    """
    problems = []
    for i, node in enumerate(nodes):
        dest = paths.root if i == 0 else paths.host_folder(node.host)
        problems += target.collect(node, dest) if target is not None else []
    with paths.metrics.open("a") as merged:
        for path in paths.metric_files():
            merged.write(path.read_text())
    gather_images(paths)
    return problems


def gather_images(paths: RunPaths) -> None:
    """Images the job logged, every node's, into the run folder's images/ (their names
    hold the task that logged them, so they never clash)."""
    for folder in [paths.root / METRICS_DIR / IMAGES_DIR,
                   *paths.root.glob(f"hosts/*/{METRICS_DIR}/{IMAGES_DIR}")]:
        if not folder.is_dir():
            continue
        paths.images.mkdir(exist_ok=True)
        for image in folder.iterdir():
            os.replace(image, paths.images / image.name)
        folder.rmdir()


def output_files(paths: RunPaths) -> list[str]:
    """The run's outputs, relative to its folder."""
    return sorted(str(p.relative_to(paths.root)) for p in paths.outputs.rglob("*") if p.is_file())


def final_facts(sub: Submission, outcome: Outcome) -> dict[str, Any]:
    """What the record holds once the run is over (its outcome becomes the status when the
    run ends). Outputs are listed before: whoever sees the final status sees them all."""
    outputs = output_files(sub.paths)
    raised = explain(outcome)
    finished = time.time()
    submitted = sub.record.read().get("created") or finished - outcome.duration
    return {
        "error": with_exception(outcome.reason, raised),
        "script_error": raised,
        "exit_code": outcome.results[0].exit_code if outcome.results else None,
        "exit_codes": {f"{r.role}:{r.index}@{r.host}": r.exit_code for r in outcome.results},
        "finished": finished,
        # One duration everywhere: submit to end; the job's processes' time beside it.
        "duration": round(finished - submitted, 3),
        "training_seconds": round(outcome.duration, 3),
        "outputs": outputs,
    }


def summary_markdown(record: dict[str, Any], metrics: dict[str, list[float]]) -> str:
    """The run's summary: status, where it ran, step timings, per-process exit codes and
    restarts, the last value of each metric."""
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
        f"- **Duration**: {record.get('duration', 0):.1f} s from submit to end "
        f"(training {record.get('training_seconds', 0):.1f} s)",
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
