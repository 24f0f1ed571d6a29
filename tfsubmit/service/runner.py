"""The detached process that executes one run: the service's edge to the pipeline and flows/.

`Experiment.submit` prepares the run folder and starts `python -m tfsubmit.service.runner
RUN_DIR` (or has the warm fork server fork one) in its own session, so the run outlives the
submitting process and can be followed, listed and canceled from any other one. A
`cancel.requested` file in the run folder asks the run to stop. A training run's steps run
here directly, mirrored into Prefect as they go (`service/mirror.py`); a sweep runs as its
Prefect flow. The runner ends the run (its record's status) once its flow run has ended
(or, for a mirrored run, after FINISH_SECONDS at most), so that both agree.

`python -m tfsubmit.service.runner --fork-server WORKSPACE` is the fork server itself.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from tfsubmit.errors import ServerError
from tfsubmit.service import forkserver
from tfsubmit.service.processes import become_subreaper
from tfsubmit.service.server import (
    START_TIMEOUT,
    api_url,
    ensure_server,
    prefect_env,
    starts_later,
    wait_for_server,
)
from tfsubmit.store import runlock
from tfsubmit.store.layout import (
    LATER_ENV,
    RUNNER_ENV,
    SECRETS_ENV,
    RunPaths,
    Workspace,
    disk_full,
    is_disk_full,
    read_json,
)
from tfsubmit.store.record import TERMINAL_STATUSES, RunRecord

# A runner that finds its run taken by another, or already ended, exits with this.
NOT_MINE = 3


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    paths = RunPaths(Path(args[0]))
    if args[1:2] == [forkserver.LOCK_FD_ARG]:
        lock_fd: int | None = int(args[2])  # handed over by the submitter, already held
        os.set_inheritable(lock_fd, False)  # the job's processes must not keep it
    else:
        lock_fd = runlock.acquire(paths.runner_lock)
        if lock_fd is None:
            print(f"tfsubmit runner: run {paths.root.name} has a live runner; leaving it",
                  flush=True)
            return NOT_MINE
    record = RunRecord(paths, lock_fd)
    if not record.claim(os.getpid()):
        print(f"tfsubmit runner {os.getpid()}: run {paths.root.name} is "
              f"{record.read().get('status')}, not Queued: another runner took it; leaving it",
              flush=True)
        return NOT_MINE
    paths.runner_pid.write_text(str(os.getpid()))
    become_subreaper()  # the job's double-forked helpers stay ours to find and stop
    os.umask(0o077)  # the run's files are this user's alone
    secrets = json.loads(os.environ.pop(SECRETS_ENV, "") or "{}")
    facts = record.read()
    early = os.environ.pop(LATER_ENV, None) == facts.get("id")
    try:
        workspace = Workspace(facts["workspace"])
        if facts.get("kind") != "sweep":
            return _run_mirrored(paths, record, facts, workspace, secrets,
                                 early=early and starts_later(workspace))
        # A sweep runs as a Prefect flow: its trials are its subflows.
        os.environ.update(prefect_env(workspace))
        os.environ["PREFECT_API_URL"] = ensure_server(workspace).api_url
        os.environ[RUNNER_ENV] = facts["id"]
        # Prefect reads its settings when first imported, so the flows are imported only now
        # that they are set; a runner forked from the warm fork server re-reads them instead.
        forked = "prefect" in sys.modules
        from tfsubmit.flows.sweep import run_sweep  # Optuna loads only for sweeps

        if forked:
            from prefect.context import refresh_global_settings_context

            refresh_global_settings_context()
        from tfsubmit.pipeline.context import hold_secrets

        hold_secrets(secrets)
        _reap_abandoned_runs(workspace, facts["id"])
        try:
            _start_flow(record, lambda: run_sweep(
                sweep=read_json(paths.job), experiment=facts["experiment"], run_id=facts["id"],
                workspace=facts["workspace"], return_state=True))
        except Exception as exc:
            if not record.read().get("outcome"):
                raise
            # The run's outcome is settled; only the report of the flow run's end was lost.
            record.note(prefect_pending=True)
            _log(paths, f"the Prefect API did not take the flow run's end ({exc}); the run's "
                        "status is its own")
        final = record.end()  # the flow run has ended: now the run does
        if final.get("prefect_pending"):
            _catch_up(paths)
        return 0 if final.get("status") == "Completed" else 1
    except BaseException as exc:  # the record must never stay "Running" after we are gone
        reason = f"the run's runner failed: {exc}"
        if is_disk_full(exc):
            reason = str(disk_full(paths.root, exc))
        try:
            if record.read().get("status") not in TERMINAL_STATUSES:
                _log(paths, f"{reason}\n{traceback.format_exc()}")
        except OSError:
            pass  # the log cannot take it (a full disk): the record still says why
        record.failed(reason)
        if isinstance(exc, Exception):
            return 1
        raise


# How long the end of a run waits for its Prefect view to catch up (a busy API); past it,
# the run ends and the view catches up afterwards.
FINISH_SECONDS = 15.0


# How long a runner keeps trying to report its run's end to an API that does not answer;
# after that, whoever next reads the run reports it.
CATCH_UP_SECONDS = 60.0


# Tries to start the flow run while the API refuses (overloaded: 503 after the client's own
# retries) before the flow's body has begun.
START_TRIES = 4


def _run_mirrored(paths: RunPaths, record: RunRecord, facts: dict, workspace: Workspace,
                  secrets: dict[str, str], *, early: bool) -> int:
    """A training run: its steps run here, directly (no Prefect engine: the job starts in
    about a second), and a mirror shows it in Prefect as it goes (`service/mirror.py`).

    `early`: the embedded server is still starting (the first submission on a fresh
    workspace); the run does not wait for it, and the mirror reports once it answers."""
    from tfsubmit.pipeline.context import hold_secrets, open_submission
    from tfsubmit.pipeline.execute import run_directly
    from tfsubmit.service.mirror import PrefectMirror
    from tfsubmit.targets.config import get_target

    os.environ[RUNNER_ENV] = facts["id"]
    hold_secrets(secrets)
    if early:
        def url() -> str | None:  # never starts one: it may have been stopped meanwhile
            return wait_for_server(workspace)
    else:
        known = ensure_server(workspace).api_url
        os.environ["PREFECT_API_URL"] = known  # for targets saved as Prefect blocks

        def url() -> str | None:
            return known
    sub = open_submission(read_json(paths.job), facts["experiment"], facts["id"],
                          facts["workspace"])
    sub.record.preparing(prepared=time.time(), topology=sub.job.topology)
    if early:
        sub.log.event("the Prefect server is still starting: the run goes on without it, and "
                      "reports to it once it answers")
    else:
        _reap_abandoned_runs(workspace, facts["id"])
    mirror = PrefectMirror(paths, record, url, say=lambda text: _log(paths, text),
                           watch_cancel=not _FORKED).start()
    sub.log.forward = mirror.line
    # Targets saved as Prefect blocks need the API: those wait for the server.
    run_directly(sub, lambda: get_target(
        sub.job.compute_target, workspace.root,
        find_block=lambda name: _block_target(workspace, name)), mirror)
    sub.log.close()
    if early:  # the run ends now; Prefect hears of it once its server is up
        final = record.end()
        shown = mirror.finish(final, timeout=START_TIMEOUT)
    else:  # Prefect's view ends first (within a bound): whoever sees the run end sees both
        shown = mirror.finish(record.read(), timeout=FINISH_SECONDS)
        final = record.end()
    if not shown:
        _report_later(paths, mirror, workspace)
    return 0 if final.get("status") == "Completed" else 1


def _report_later(paths: RunPaths, mirror, workspace: Workspace) -> None:
    """The mirror could not show the whole run: its flow run's end is caught up, or, where
    none was made, a flow run in its final state with its log lines is."""
    from tfsubmit.pipeline.reap import report_afterwards

    if mirror.unreported:
        RunRecord(paths).note_if_room(prefect_unreported=mirror.unreported)
        _log(paths, "the Prefect server did not come up (stopped, or its start failed); the "
                    "run is not in Prefect (its record and folder are complete)")
        return
    if mirror.flow_run_id is not None:
        _catch_up(paths)
        return
    url = wait_for_server(workspace)
    try:
        if url is None:
            raise ServerError("the Prefect server is not running")
        flow_run_id = report_afterwards(paths, url)
        _log(paths, f"reported to Prefect once its server answered: flow run {flow_run_id}")
    except Exception as exc:  # noqa: BLE001 (the outcome is the record's; Prefect is a view)
        RunRecord(paths).note_if_room(prefect_unreported=str(exc))
        _log(paths, f"could not report the run to Prefect: {exc}")


def _block_target(workspace: Workspace, name: str):
    from tfsubmit.tasks.blocks import load_block_target

    return load_block_target(name, wait_for_server(workspace))


def _start_flow(record: RunRecord, run: Callable[[], object]) -> None:
    import httpx

    for attempt in range(1, START_TRIES + 1):
        try:
            run()
            return
        except httpx.HTTPError:
            if record.read().get("flow_run_id") or attempt == START_TRIES:
                raise  # the flow had begun (or it is the last try): not a start to retry
            time.sleep(2.0 * attempt)


def _reap_abandoned_runs(workspace: Workspace, own_id: str) -> None:
    """Each new run looks, in the background, for runs whose runner died while nobody read
    them, and reaps them (what is left of them would otherwise keep running)."""
    import threading

    from tfsubmit.pipeline.reap import reap_abandoned

    threading.Thread(target=reap_abandoned, args=(workspace,),
                     kwargs={"skip": own_id,
                             "find_block": lambda name: _block_target(workspace, name)},
                     daemon=True, name="reap-abandoned").start()


def _catch_up(paths: RunPaths) -> None:
    from tfsubmit.pipeline.reap import catch_up

    delay, deadline = 1.0, time.monotonic() + CATCH_UP_SECONDS
    while not catch_up(paths) and time.monotonic() < deadline:
        time.sleep(delay)
        delay = min(delay * 2, 15.0)


def _log(paths: RunPaths, text: str) -> None:
    with paths.output_log.open("a") as log:
        log.write(f"[tfsubmit] {text}\n")


# Whether this runner is a child of the fork server (which looks for cancels from Prefect
# for all the workspace's runs at once).
_FORKED = False


def forked_main(argv: list[str]) -> int:
    """`main` in a child of the fork server, which leaves with os._exit."""
    global _FORKED
    _FORKED = True
    try:
        return main(argv)
    finally:
        _drain_prefect()


def _drain_prefect() -> None:
    """Send Prefect's last queued logs and events (a sweep's): os._exit skips the exit
    hooks that would (without this, the last seconds of its log lines never reached the
    API)."""
    if "prefect" not in sys.modules:
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=10)
        except Exception as exc:  # noqa: BLE001 (best effort on the way out)
            print(f"tfsubmit: could not flush {worker.__name__}: {exc}", file=sys.stderr)


def share_tls_contexts() -> None:
    """One TLS context per CA file for the whole process (and the runners forked from it).

    Each httpx client (the mirror's; a sweep's Prefect clients: the API, the log and event
    workers, the server version check) builds `ssl.create_default_context(cafile=certifi's
    bundle)`, which parses ~150 certificates: a quarter of a short run's CPU time in the
    runner, for an API that is plain http here. A verified context for a given CA file is the same
    every time, and nothing changes it after it is made (Prefect and httpx pass it to their
    transports as it is), so it is made once; any other call goes to the original."""
    import ssl

    original = ssl.create_default_context
    if getattr(original, "shared", False):
        return
    made: dict[tuple, ssl.SSLContext] = {}

    def shared(purpose=ssl.Purpose.SERVER_AUTH, *, cafile=None, capath=None, cadata=None):
        if cafile is None or capath is not None or cadata is not None \
                or purpose != ssl.Purpose.SERVER_AUTH:
            return original(purpose, cafile=cafile, capath=capath, cadata=cadata)
        try:
            key = (str(cafile), os.stat(cafile).st_mtime_ns)
        except OSError:
            return original(purpose, cafile=cafile)
        if key not in made:
            made[key] = original(purpose, cafile=cafile)
        return made[key]

    shared.shared = True
    ssl.create_default_context = shared


def serve_forks(workspace_root: str) -> None:
    """The fork server: import what a training run's runner needs once, then fork a runner
    per submission. Prefect is not among it (training runs report through the mirror); a
    sweep's runner imports it after the fork, as a spawned runner would."""
    import httpx

    import tfsubmit.pipeline.execute  # noqa: F401  (the point of this process: import once)
    import tfsubmit.targets.config  # noqa: F401
    from tfsubmit.service.mirror import CANCEL_POLL_SECONDS, watch_prefect_cancels

    share_tls_contexts()
    httpx.Client().close()  # makes the one TLS context every runner's API client shares
    workspace = Workspace(workspace_root)
    forkserver.serve(workspace, forked_main, every=(CANCEL_POLL_SECONDS, lambda: (
        watch_prefect_cancels(workspace, api_url(workspace, start=False)))))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--fork-server"]:
        serve_forks(sys.argv[2])
    else:
        sys.exit(main())
