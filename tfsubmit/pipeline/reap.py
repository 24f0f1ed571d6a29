"""Reaping: a run whose runner is gone (`kill -9`, a crash, a reboot) is ended by whoever
next touches it (a reader, `cancel`, `tfsubmit runs`): what is left of its job is stopped on
every host, its files are collected, the reason is recorded and its flow run is told.

The reaper first takes the run's runner lock, so it is the one process responsible for the
run while it works, and a live runner is never reaped. `cancel` also reaps runs already
ended: whatever of them still runs is stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tfsubmit.errors import TfsubmitError
from tfsubmit.pipeline.collect import gather, output_files
from tfsubmit.service.prefect_api import PrefectAPI
from tfsubmit.service.processes import still_running
from tfsubmit.service.server import api_url
from tfsubmit.spec.process import Node
from tfsubmit.store import runlock
from tfsubmit.store.layout import RunPaths, Workspace, read_json, read_record
from tfsubmit.store.record import CANCELED, COMPLETED, FAILED, TERMINAL_STATUSES, RunRecord
from tfsubmit.store.runlog import RunLog
from tfsubmit.targets.config import BlockLookup, get_target

RUNNER_GONE = "the run's runner process died (see runner.log in the run folder)"
# Seconds a reaper gives the flow run's API to answer; a dead server must not hold it up.
API_SECONDS = 5.0


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
        _tell_prefect(result.record, message)
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


def _tell_prefect(record: dict[str, Any], message: str) -> None:
    """Its flow run ends too (CRASHED: its process died); a dead API is only noted."""
    if not report_final_state(record, message, crashed=True):
        RunRecord(RunPaths(Path(record["workspace"]) / "runs" / record["id"])).note(
            prefect_pending=True)


PREFECT_STATE = {COMPLETED: "COMPLETED", FAILED: "FAILED", CANCELED: "CANCELLED"}


def report_final_state(record: dict[str, Any], message: str | None = None, *,
                       crashed: bool = False) -> bool:
    """Set the run's flow run to the state its record ended in; False when the API does
    not take it (within API_SECONDS)."""
    url, flow_run_id = record.get("prefect_api_url"), record.get("flow_run_id")
    if not url or not flow_run_id or record.get("status") not in PREFECT_STATE:
        return True  # nothing to report to
    if record.get("workspace"):  # the embedded server may be back on another port
        url = api_url(record["workspace"], start=False)
        if url is None:
            return False
    state = "CRASHED" if crashed and record["status"] == FAILED else PREFECT_STATE[record["status"]]
    api = PrefectAPI(url, timeout=API_SECONDS)
    try:
        api.set_state(flow_run_id, state, (message or record.get("error") or "")[:500])
        return True
    except TfsubmitError:
        return False
    finally:
        api.close()


def report_afterwards(paths: RunPaths, url: str) -> str:
    """Tell Prefect about a run that went on without it (its server was not up yet): a
    `submit-training` flow run named after it, in its final state, with its log lines.
    Returns the flow run's id."""
    record = RunRecord(paths)
    facts = record.read()
    api = PrefectAPI(url, timeout=30)
    try:
        flow_run = api.record_flow_run(
            "submit-training", name=facts["id"], tags=[facts.get("experiment") or "default"],
            parameters={"job": read_json(paths.job), "experiment": facts.get("experiment"),
                        "run_id": facts["id"], "workspace": facts.get("workspace")},
            state_type=PREFECT_STATE.get(facts.get("status"), "FAILED"),
            message=(facts.get("error") or "")[:500])
        when = facts.get("finished") or time.time()
        api.post_logs(flow_run["id"], [(when, line, None) for line in
                                       paths.output_log.read_text(errors="replace").splitlines()])
    finally:
        api.close()
    record.note(flow_run_id=flow_run["id"], prefect_api_url=url, prefect_pending=False)
    return flow_run["id"]


def catch_up(paths: RunPaths) -> bool:
    """Report an ended run's state to Prefect where the API missed it (it was down when the
    run ended); anyone may, any number of times (the state is set, not added). True once
    Prefect has it."""
    record = RunRecord(paths)
    facts = record.read()
    if not facts.get("prefect_pending") or facts.get("status") not in TERMINAL_STATUSES:
        return not facts.get("prefect_pending")
    if not report_final_state(facts):
        return False
    record.note(prefect_pending=False)
    return True


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
        if status in TERMINAL_STATUSES or status is None or runlock.held(paths.runner_lock):
            continue
        try:
            if reap(workspace, paths, find_block=find_block):
                reaped.append(folder.name)
        except Exception:  # noqa: BLE001 (one run's trouble must not stop the others)
            continue
    return reaped
