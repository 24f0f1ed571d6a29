"""Reaping: a run whose runner is gone (`kill -9`, a crash, a reboot) is ended by whoever
next touches it (a reader, `cancel`, `tfsubmit runs`): what is left of its job is stopped on
every host, its files are collected and the reason is recorded. Prefect hears of it from
its own worker, which saw the flow run's process end (Crashed).

The reaper first takes the run's runner lock, so it is the one process responsible for the
run while it works, and a live runner is never reaped. `cancel` also reaps runs already
ended: whatever of them still runs is stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tfsubmit.errors import TfsubmitError
from tfsubmit.pipeline.collect import gather, output_files
from tfsubmit.spec.process import Node
from tfsubmit.store import runlock
from tfsubmit.store.layout import RunPaths, Workspace, read_record
from tfsubmit.store.record import CANCELED, QUEUED, TERMINAL_STATUSES, RunRecord
from tfsubmit.store.runlog import RunLog
from tfsubmit.system.processes import still_running
from tfsubmit.targets.config import BlockLookup, get_target

RUNNER_GONE = ("the run's runner process died (its flow run's process; see the worker's log, "
               "prefect/worker.log in the workspace)")


@dataclass
class Reaped:
    record: dict[str, Any]
    stopped: list[tuple[str, int | str]] = field(default_factory=list)
    survivors: list[tuple[str, int | str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def reap(workspace: Workspace, paths: RunPaths, *, status: str = "Failed",
         reason: str = RUNNER_GONE, find_block: BlockLookup | None = None,
         on_event: Callable[[str], None] = lambda text: None) -> Reaped | None:
    """End run `paths` if no live process is responsible for it (None when one is): stop
    what is left of it on every host, collect its files, and record it `status` with
    `reason`. A run already ended keeps its status; only its leftovers are stopped."""
    lock_fd = runlock.acquire(paths.runner_lock)
    if lock_fd is None:
        return None
    record = RunRecord(paths, lock_fd)
    try:
        facts = record.read()
        ended = facts.get("status") in TERMINAL_STATUSES
        result = Reaped(facts)
        _stop_and_collect(workspace, paths, facts, result, collect=not ended,
                          find_block=find_block)
        if ended:
            return result
        words = [reason]
        if result.stopped:
            words.append(f"stopped {len(result.stopped)} leftover process(es)")
        words += result.problems
        message = "; ".join(words)
        log = RunLog(paths.output_log)
        try:
            log.event(f"reaped: {message}")
        finally:
            log.close()
        on_event(message)
        record.note(outputs=output_files(paths))
        result.record = (record.canceled(message) if status == CANCELED
                         else record.failed(message))
        return result
    finally:
        record.release_lock()


def _stop_and_collect(workspace: Workspace, paths: RunPaths, facts: dict[str, Any],
                      result: Reaped, *, collect: bool, find_block: BlockLookup | None) -> None:
    run_id = paths.root.name
    nodes = [Node(**node) for node in facts.get("nodes") or []]
    try:
        target = get_target(facts.get("compute_target") or "local", workspace.root,
                            find_block=find_block)
    except TfsubmitError as exc:
        result.problems.append(f"its target is unknown now ({exc})")
        return
    try:
        result.problems += target.attach(run_id, nodes)
        result.stopped = target.leftovers(run_id)
        if result.stopped:
            target.kill(result.stopped)
            result.survivors = still_running(lambda: target.leftovers(run_id), seconds=5.0)
        if collect:
            result.problems += gather(paths, target, nodes)
    except TfsubmitError as exc:
        result.problems.append(str(exc))
    finally:
        target.close()


def reap_abandoned(workspace: Workspace, *, skip: str = "",
                   find_block: BlockLookup | None = None) -> list[str]:
    """Reap every unfinished run of the workspace that nobody is responsible for (its
    runner died while nobody looked): the ids reaped. Runs being made hold their lock from
    birth, so none is taken for dead."""
    reaped = []
    if not workspace.runs.is_dir():
        return reaped
    for folder in workspace.runs.iterdir():
        if folder.name == skip:
            continue
        paths = RunPaths(folder)
        try:
            status = read_record(paths.record).get("status")
        except TfsubmitError:
            continue  # unreadable: listed as such, never touched
        if status in (*TERMINAL_STATUSES, QUEUED, None) or runlock.held(paths.runner_lock):
            continue
        try:
            if reap(workspace, paths, find_block=find_block):
                reaped.append(folder.name)
        except Exception:  # noqa: BLE001 (one run's trouble must not stop the others)
            continue
    return reaped
