"""Step 4, launch: plan the job's processes, pre-flight check the nodes, supervise the job."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable

from tfsubmit.errors import TargetError
from tfsubmit.launchers import Plan, Preflight, launcher_for
from tfsubmit.pipeline.context import Submission
from tfsubmit.pipeline.progress import Metrics, MetricsWatcher
from tfsubmit.pipeline.supervise import Outcome, RestartPolicy, supervise
from tfsubmit.runtime.context import PROPERTIES_ENV
from tfsubmit.spec.environment import Environment
from tfsubmit.spec.process import Node
from tfsubmit.store.layout import read_json
from tfsubmit.store.runlog import RunLog
from tfsubmit.targets.base import Target


def launch_topology(sub: Submission, target: Target, nodes: list[Node], env: Environment,
                    log: RunLog, *, on_metrics: Callable[[Metrics], None] | None = None
                    ) -> Outcome:
    """Run the job's processes on the nodes until they are done, fail or are stopped.

    `on_metrics` gets the job's metrics every second while it runs (where the target can
    read them live).
    """
    sub.check_canceled()
    job = sub.job
    launcher = launcher_for(job)
    options = target.launch_options()
    check = launcher.preflight(job, nodes, run_id=sub.run_id, options=options)
    if check is not None:
        run_preflight(sub, target, nodes, check, log)
    plan = launcher.plan(job, nodes, run_id=sub.run_id, options=options)
    given = read_json(sub.paths.root / "properties.json")  # set from the submitting side
    if given:  # the job's own add_properties then refuses another value for them
        plan = dataclasses.replace(plan, specs=tuple(
            dataclasses.replace(spec, env={**spec.env, PROPERTIES_ENV: json.dumps(given)})
            for spec in plan.specs))
    placed = ", ".join(f"{s.role}:{s.index}@{s.host}" for s in plan.specs)
    log.event(f"starting {len(plan.specs)} process(es) ({placed}): "
              f"{' '.join(plan.specs[0].argv[1:])}")
    watching = (MetricsWatcher(lambda: target.metric_files(nodes), on_metrics, warn=log.event)
                if on_metrics else contextlib.nullcontext())
    with watching:
        outcome = _supervise(sub, target, nodes, plan, log)
    if outcome.status == "Failed":
        outcome.reason = launcher.explain(outcome.reason, plan,
                                          lambda: sub.paths.output_log.read_text().splitlines())
        outcome.reason = root_cause_first(target, outcome.reason)
    if outcome.status == "Canceled":
        outcome.reason = sub.cancel.reason()
    log.event(f"processes ended: {outcome.status}")  # the reason ends the run's log, once
    if outcome.restarts:
        sub.record.note(restarts=outcome.restarts)
    return outcome


def root_cause_first(target: Target, reason: str | None) -> str | None:
    """The reason led by its root cause where the target's scheduler ended the job (a
    target may offer `scheduler_cause`; Slurm does): then the first task it broke."""
    cause_of = getattr(target, "scheduler_cause", None)
    cause = cause_of() if cause_of else None
    if not cause or not reason or reason.startswith(cause):
        return reason
    return f"{cause}; the first task it broke: {reason}"


def run_preflight(sub: Submission, target: Target, nodes: list[Node], check: Preflight,
                  log: RunLog) -> None:
    """Run the launcher's check of all nodes; when it fails, check the first node with each
    other one and raise an error naming those that cannot join."""

    def passes(name: str, spec) -> bool:
        outcome = supervise(target, [spec], run_id=sub.run_id, log=log,
                            log_dir=sub.paths.logs / name, cancel=sub.cancel,
                            max_seconds=check.seconds, grace_seconds=2)
        return outcome.status == "Completed"

    log.event(f"pre-flight: {check.description}")
    if passes("preflight", check.whole):
        return
    failing = [host for host, spec in check.pairs.items()
               if not passes(f"preflight-{host}", spec)]
    raise TargetError(check.failure(nodes[0].host, failing))


def _supervise(sub: Submission, target: Target, nodes: list[Node], plan: Plan,
               log: RunLog) -> Outcome:
    job = sub.job
    return supervise(
        target,
        list(plan.specs),
        run_id=sub.run_id,
        log=log,
        log_dir=sub.paths.logs,
        cancel=sub.cancel,
        max_seconds=job.max_run_duration_seconds,
        on_started=lambda handles: sub.record.running(
            started=time.time(), pids=[h.pid for h in handles]),
        decides=plan.decides,
        policy=RestartPolicy(
            max_restarts=job.max_restarts,
            permanent_exit_codes=frozenset(job.permanent_exit_codes),
            alone=plan.restart_alone,
        ),
        hang_seconds=job.hang_timeout_seconds,
        startup_seconds=job.startup_limit,
        activity=lambda: target.last_activity(nodes),
        silence_seconds=job.silence_notice_seconds,
        stall_hint=_STALL_HINT if job.distributed_backend == "ps" and not job.chief else None,
    )


# Measured: TensorFlow's own parameter-server tutorial (a TF2 ClusterCoordinator script) run
# without a chief waits forever, silently: every task serves and none coordinates.
_STALL_HINT = ("no task has ended and no metric came: a TF2 ParameterServerStrategy script "
               "with a ClusterCoordinator needs a chief to coordinate; submit it with "
               "chief=True (Azure ML v1's TF1 scripts, whose worker 0 leads, need none)")
