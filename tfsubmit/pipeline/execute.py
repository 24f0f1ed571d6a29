"""One run's steps in order (snapshot, environment, nodes, launch) and its settling (collect).

The `submit-training` flow runs each step as a Prefect task (`flows/submit.py`), or its body
directly once the API stopped answering; either way a step's failure becomes the run's
outcome here, in one place.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from tfsubmit.errors import TfsubmitError
from tfsubmit.pipeline import collect
from tfsubmit.pipeline.context import RunCanceled, Submission
from tfsubmit.pipeline.supervise import Outcome
from tfsubmit.spec.environment import Environment
from tfsubmit.spec.process import Node
from tfsubmit.store.layout import disk_full, is_disk_full
from tfsubmit.store.snapshots import Snapshot
from tfsubmit.targets.base import Target

T = TypeVar("T")

# Why a run ends when Prefect's worker stopped its flow run's process (a cancel there).
CANCELED_FROM_PREFECT = ("canceled from Prefect (the UI, the API or `prefect flow-run "
                         "cancel`): the flow run was stopped by its worker")


@dataclass(frozen=True)
class Steps:
    """How each step runs (as a Prefect task, or directly)."""

    snapshot: Callable[[Submission], Snapshot]
    environment: Callable[[Submission, Target], Environment]
    provision: Callable[[Submission, Target, Snapshot, Environment], list[Node]]
    launch: Callable[[Submission, Target, list[Node], Environment], Outcome]


def run_steps(sub: Submission, get_target: Callable[[], Target], steps: Steps, *,
              stop_signals: tuple[type[BaseException], ...] = ()
              ) -> tuple[Target | None, list[Node], Outcome]:
    """Run the steps; whatever stops them becomes the outcome (never an exception).
    `stop_signals`: exceptions that mean the run's process was told to stop (canceled)."""
    target: Target | None = None
    nodes: list[Node] = []
    timings: dict[str, float] = {}

    def timed(name: str, step: Callable[[], T]) -> T:
        began = time.monotonic()
        try:
            return step()
        finally:
            timings[name] = round(time.monotonic() - began, 3)
            sub.record.note(steps=timings)

    try:
        target = get_target()
        snap = timed("snapshot_source", lambda: steps.snapshot(sub))
        env = timed("resolve_environment", lambda: steps.environment(sub, target))
        nodes = timed("provision_nodes", lambda: steps.provision(sub, target, snap, env))
        outcome = timed("launch_topology", lambda: steps.launch(sub, target, nodes, env))
    except RunCanceled as exc:
        outcome = Outcome("Canceled", str(exc))
    except stop_signals:
        # The flow run's process was stopped (a cancel from Prefect, through its worker): the
        # job's processes are already stopped; keep its logs and outputs.
        sub.log.event("the flow run's process was told to stop (SIGTERM); canceling")
        outcome = Outcome("Canceled", CANCELED_FROM_PREFECT)
    except TfsubmitError as exc:
        if sub.cancel.is_set():  # a step stopped by the cancel (an environment build, say)
            sub.log.event(f"canceled while {exc}")
            outcome = Outcome("Canceled", sub.cancel.reason())
        else:  # said once, when the run ends ("run ... Failed: <reason>")
            outcome = Outcome("Failed", str(exc))
    except Exception as exc:
        if is_disk_full(exc):
            outcome = Outcome("Failed", str(disk_full(sub.paths.root, exc)))
        else:  # a bug of ours: keep the traceback with the run
            sub.log.event("internal error:\n" + traceback.format_exc())
            outcome = Outcome("Failed", f"internal error: {exc!r}")
    return target, nodes, outcome


Publish = Callable[[list[dict], dict[str, Any], Outcome], None]


def settle(sub: Submission, target: Target | None, nodes: list[Node], outcome: Outcome,
           *, publish: Publish | None = None) -> dict[str, Any]:
    """Collect outputs, logs and metrics into the run folder and settle its outcome (for
    failed and canceled runs too); then `publish` (Prefect's artifacts), whose failure is
    only said. Returns the record."""
    from tfsubmit.runtime.metrics import read_records

    log = sub.log
    for problem in collect.gather(sub.paths, target, nodes):
        log.event(f"collecting: {problem}")
    metrics = read_records([sub.paths.metrics])
    final = collect.final_facts(sub, outcome)
    log.event(f"collected {len(final['outputs'])} output file(s) into {sub.paths.outputs}")
    # The outcome is settled before anything is reported to Prefect, which may be gone;
    # the status follows when the run ends, after the artifacts.
    record = sub.record.settle(outcome.status, **final)
    if publish is not None:
        try:
            publish(metrics, final, outcome)
        except Exception as exc:  # noqa: BLE001 (the API is down or refuses: say so, go on)
            log.event(f"could not publish the run's artifacts to Prefect: {exc}")
    log.event(f"run {sub.run_id} {outcome.status}"
              + (f": {final['error']}" if final["error"] else ""))
    return record
