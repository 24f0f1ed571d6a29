"""The `tfsubmit` command line.

    tfsubmit submit JOB.yaml|SWEEP.yaml [--experiment NAME] [--detach]
                    [--deployment FLOW/DEPLOYMENT]
    tfsubmit resume SWEEP
    tfsubmit image bootstrap [--target NAME]
    tfsubmit runs [--experiment NAME] [--limit N] [--metric NAME [--goal G]]
    tfsubmit show RUN [--json] [--task ROLE:INDEX]
    tfsubmit download RUN [--prefix outputs/] [--to DIR]
    tfsubmit tensorboard [RUN ...] [--experiment E] [--sweep S] [--port P]
    tfsubmit logs RUN [--follow] [--task ROLE:INDEX] [--grep REGEX]
    tfsubmit cancel RUN
    tfsubmit server start|stop|status
    tfsubmit connections [list | close [ADDRESS ...]]
    tfsubmit register RUN --name NAME [--path outputs/model] [--tag K=V ...]
    tfsubmit models [NAME]
    tfsubmit deploy MODEL[:VERSION] --name N [--target T] [--score score.py]
                    [--source DIR] [--port P] [--auth] [--overwrite]
    tfsubmit endpoints [list | show N | logs N | delete N]
    tfsubmit --version

RUN is a run id, a unique start of one, or `latest`.
Exit codes: 0 success, 1 the run Failed or was Canceled (submit, resume, logs --follow),
2 bad input or a tfsubmit error.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

from tfsubmit.errors import RunFailedError, TfsubmitError
from tfsubmit.store.layout import Workspace


def _load(path: str):
    """A job or a sweep (a YAML with `estimator:` and `space:`), and its experiment."""
    from pathlib import Path

    from tfsubmit.errors import JobSpecError
    from tfsubmit.spec.job import load_job_file
    from tfsubmit.spec.sweep import is_sweep_data, load_sweep_file
    from tfsubmit.spec.yamlfile import load_mapping

    sweep = is_sweep_data(load_mapping(Path(path), "job", JobSpecError))
    return load_sweep_file(path) if sweep else load_job_file(path)


def _submit(args: argparse.Namespace) -> int:
    from tfsubmit.api import Experiment

    job, experiment = _load(args.job)
    experiment = Experiment(args.experiment or experiment or "default", workspace=args.workspace)
    run = experiment.submit(job, deployment=args.deployment)
    if args.deployment:
        print(f"Submitted run {run.id} to deployment {args.deployment}: "
              f"{run.get_details()['prefect_ui']}", flush=True)
    else:
        print(f"Submitted run {run.id} (workspace {run.workspace.root})", flush=True)
    if args.detach:
        print(f"Follow it with `tfsubmit logs {run.id} --follow`; see it with "
              f"`tfsubmit show {run.id}`; stop it with `tfsubmit cancel {run.id}`", flush=True)
        return 0
    return _follow(run)


def _follow(run) -> int:
    try:
        details = run.wait_for_completion(show_output=True)
    except RunFailedError as exc:
        reason = run.get_details().get("reason") or ""
        tail = list(run.stream_logs(follow=False))[-5:]
        said = reason and any(reason in line for line in tail)  # it ended the log: not again
        print(f"tfsubmit: run {run.id} {exc.status}" + ("" if said else f": {reason}")
              + f"; logs kept in {run.where()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\nStill running; follow with `tfsubmit logs {run.id} --follow` or stop it with "
              f"`tfsubmit cancel {run.id}`", file=sys.stderr)
        return 130
    if hasattr(run, "get_trials"):
        _print_trials(run)
    else:
        _print_metrics(run.get_metrics())
        tasks = run.get_metric_tasks()
        if len(tasks) > 1:
            print(f"  (metrics of {tasks[0]}; the other tasks': `tfsubmit show {run.id} "
                  f"--task TASK`, one of {', '.join(tasks[1:])})")
    where = (f"outputs in {run.paths.outputs}" if hasattr(run, "paths")
             else f"see {details['prefect_ui']}")
    print(f"Run {run.id} {details['status']} in {details.get('duration', 0):.1f} s; {where}")
    return 0


def _print_trials(run) -> None:
    details = run.get_details()
    metric = details.get("primary_metric", "metric")
    print(f"{'TRIAL':6} {'STATUS':16} {metric:>12} PARAMS")
    for row in run.get_trials():
        value = "-" if row["value"] is None else f"{row['value']:.6g}"
        params = ", ".join(f"{k}={v}" for k, v in row["params"].items())
        print(f"{row['trial']:<6} {row['status']:16} {value:>12} {params}")
    best = run.get_best_run()
    if best:
        print(f"best: {best.id} {best.script_params}")


def _resume(args: argparse.Namespace) -> int:
    from tfsubmit.api import SweepRun

    run_id = Workspace(args.workspace).resolve_run_id(args.run)
    run = SweepRun(run_id, workspace=args.workspace).resume()
    print(f"Resumed sweep {run.id}", flush=True)
    return 0 if args.detach else _follow(run)


def _image(args: argparse.Namespace) -> int:
    from tfsubmit.targets.config import load_targets
    from tfsubmit.targets.docker import DockerTarget
    from tfsubmit.targets.images import bootstrap_base

    config = load_targets(Workspace(args.workspace).root).get(args.target)
    if config is None or config.type != "docker":
        raise TfsubmitError(f"--target: {args.target!r} is not a docker target")
    target = DockerTarget(args.target, config)
    began = time.monotonic()
    try:
        tag = bootstrap_base(target.client, config.base_image,
                             on_line=lambda line: print(line, flush=True))
    finally:
        target.close()
    print(f"base image {tag} ready on {config.base_url} ({time.monotonic() - began:.1f} s)")
    return 0


def _print_metrics(metrics: dict) -> None:
    from tfsubmit.runtime.metrics import TOTAL_EPOCHS

    for name, values in sorted(metrics.items()):
        if name == TOTAL_EPOCHS:
            continue
        if isinstance(values, list):
            shown = ", ".join(_number(v) for v in values[-5:])
            print(f"  {name}: [{'..., ' if len(values) > 5 else ''}{shown}]")
        elif isinstance(values, dict):  # a table: its columns
            print(f"  {name}: table of {', '.join(values)} "
                  f"({max((len(c) for c in values.values()), default=0)} rows)")
        else:
            print(f"  {name}: {_number(values)}")


def _number(value) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) else str(value)


def _runs(args: argparse.Namespace) -> int:
    """The workspace's runs (their records are the truth: a run whose runner died is reaped
    here), and runs that deployments' workers ran elsewhere, from the Prefect API."""
    from tfsubmit.api import Run
    from tfsubmit.service.server import api_url

    workspace = Workspace(args.workspace)
    rows = []
    for record in workspace.list_runs(args.experiment)[: args.limit]:
        status, error = record.get("status", "?"), record.get("error")
        if status not in ("Completed", "Failed", "Canceled", "Unreadable"):
            details = Run(record["id"], workspace=workspace.root).get_details()
            status, record = details.get("status", status), details
        rows.append((record.get("created", 0), record["id"], record.get("experiment", "-"),
                     status, record.get("duration"), record.get("flow_run_id") or "-",
                     error if status == "Unreadable" else None, _where(record)))
    url = api_url(args.workspace, start=False)
    if url:
        rows += _runs_elsewhere(args, url, {row[1] for row in rows})
    else:
        print("(no Prefect API running: runs that workers ran elsewhere are not listed)",
              file=sys.stderr)
    if not rows:
        print("no runs yet" + (f" in experiment {args.experiment}" if args.experiment else ""))
        return 0
    shown = sorted(rows, reverse=True)[: args.limit]
    values, best = _metric_column(workspace, args, shown)
    metric = f"{args.metric.upper()[:14]:15} " if args.metric else ""
    print(f"{'RUN':44} {'EXPERIMENT':16} {'STATUS':10} {'SUBMITTED':20} {'DURATION':9} "
          f"{metric}{'TARGET':24} FLOW RUN")
    for created, run_id, experiment, status, duration, flow_run, problem, where in shown:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created))
        took = f"{duration:.1f} s" if isinstance(duration, int | float) else "-"
        cell = ""
        if args.metric:
            value = values.get(run_id)
            cell = (_value(value) if value is not None else "-") + \
                (" *" if best.get(experiment) == run_id else "")
            cell = f"{cell:15} "
        print(f"{run_id:44} {experiment:16} {status:10} {when:20} {took:9} {cell}{where:24} "
              f"{flow_run}" + (f"  ({problem})" if problem else ""))
    if args.metric:
        print(f"* the best {args.metric} of its experiment ({_goal_of(args)}: the last "
              "value each completed run logged)")
    return 0


def _goal_of(args: argparse.Namespace) -> str:
    if args.goal:
        return args.goal
    lowered = args.metric.lower()
    return "minimize" if any(w in lowered for w in ("loss", "err", "mse", "mae")) \
        else "maximize"


def _metric_column(workspace: Workspace, args: argparse.Namespace, rows: list[tuple]
                   ) -> tuple[dict[str, float], dict[str, str]]:
    """Each run's last value of --metric, and each experiment's best completed run."""
    if not args.metric:
        return {}, {}
    from tfsubmit.spec.goals import better
    from tfsubmit.store.registry import last_values

    goal = _goal_of(args)
    values, best, best_value = {}, {}, {}
    for row in rows:
        run_id, experiment, status = row[1], row[2], row[3]
        try:
            value = last_values(workspace, run_id).get(args.metric)
        except (OSError, ValueError, TfsubmitError):
            value = None
        if value is None:
            continue
        values[run_id] = value
        if status == "Completed" and better(value, best_value.get(experiment), goal):
            best[experiment], best_value[experiment] = run_id, value
    return values, best


def _where(record: dict) -> str:
    """The run's target, and its scheduler's job id (`slurm:12`) where it has one."""
    target = record.get("compute_target") or record.get("target") or "-"
    job = record.get("slurm_job_id")
    return f"{target} slurm:{job}" if job else target


def _runs_elsewhere(args: argparse.Namespace, url: str, known: set[str]) -> list[tuple]:
    """Flow runs of `submit-training` and `sweep` that this workspace has no folder for."""
    from datetime import datetime

    from tfsubmit.errors import TfsubmitError
    from tfsubmit.service.prefect_api import PrefectAPI, status_of

    api = PrefectAPI(url, timeout=10)
    try:
        flow_runs = api.flow_runs(flow_names=["submit-training", "sweep"],
                                  tags=[args.experiment] if args.experiment else None,
                                  limit=args.limit)  # read page by page past the API's 200
    except TfsubmitError as exc:
        print(f"(the Prefect API did not answer: {exc}; runs that workers ran elsewhere are "
              "not listed)", file=sys.stderr)
        return []
    finally:
        api.close()
    rows = []
    for flow_run in flow_runs:
        if flow_run["name"] in known:
            continue
        experiment = (flow_run.get("parameters") or {}).get("experiment") or ",".join(
            flow_run.get("tags") or [])
        try:
            created = datetime.fromisoformat(flow_run["created"]).timestamp()
        except (KeyError, TypeError, ValueError):
            created = 0
        rows.append((created, flow_run["name"], experiment or "-", status_of(flow_run),
                     flow_run.get("total_run_time"), flow_run["id"], None, "-"))
    return rows


def _show(args: argparse.Namespace) -> int:
    from tfsubmit.api import open_run

    run = open_run(args.run, workspace=args.workspace)
    details = run.get_details()
    details["metrics"] = run.get_metrics(task=args.task)
    details["metric_tasks"] = run.get_metric_tasks()
    if hasattr(run, "paths"):
        details["run_folder"] = str(run.paths.root)
    # The UI of the server answering now (an embedded one may have come back on another
    # port since the run was submitted).
    details["prefect_ui"] = details.get("portalUrl") or details.get("prefect_ui")
    if args.json:
        print(json.dumps(_shown(details), indent=2, sort_keys=True, allow_nan=False))
    else:
        print("\n".join(summary_lines(details, run)))
    return 0


def _download(args: argparse.Namespace) -> int:
    from tfsubmit.api import open_run

    run = open_run(args.run, workspace=args.workspace)
    copied = run.download_files(prefix=args.prefix, output_directory=args.to)
    if not copied:
        raise TfsubmitError(f"run {run.id} has no files" + (f" under {args.prefix!r}"
                                                            if args.prefix else "")
                            + "; `tfsubmit show RUN` lists its outputs")
    for path in copied:
        print(path)
    print(f"{len(copied)} file(s) of run {run.id} in {Path(args.to).resolve()}",
          file=sys.stderr)
    return 0


def _tensorboard(args: argparse.Namespace) -> int:
    import signal as signals
    import threading

    from tfsubmit.api.runs import SweepRun, run_of
    from tfsubmit.api.tensorboard import TensorBoard

    workspace = Workspace(args.workspace)
    runs = [run_of(workspace.resolve_run_id(r), workspace=workspace.root) for r in args.runs]
    if args.experiment:
        found = [run_of(r["id"], workspace=workspace.root)
                 for r in workspace.list_runs(args.experiment) if r.get("kind") != "sweep"]
        if not found:
            raise TfsubmitError(f"--experiment: no runs in experiment {args.experiment!r}")
        runs += found
    if args.sweep:
        sweep = run_of(workspace.resolve_run_id(args.sweep), workspace=workspace.root)
        if not isinstance(sweep, SweepRun):
            raise TfsubmitError(f"--sweep: run {sweep.id} is not a sweep")
        runs += sweep.get_children()
    runs = list({run.id: run for run in runs}.values())
    board = TensorBoard(runs, workspace=workspace.root, port=args.port)
    stop = threading.Event()
    for sig in (signals.SIGINT, signals.SIGTERM):
        signals.signal(sig, lambda *_: stop.set())
    url = board.start()
    try:
        print(f"TensorBoard over {len(runs)} run(s): {url}", flush=True)
        print("(live while they train; Ctrl-C stops it)", file=sys.stderr, flush=True)
        stop.wait()
    finally:
        board.stop()
    print("TensorBoard stopped", file=sys.stderr)
    return 0


def _value(value) -> str:
    """A metric's value as people read it: 4 significant digits."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        text = str(value)
        return text if len(text) <= 40 else text[:37] + "..."
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.4g}"


def summary_lines(details: dict, run) -> list[str]:
    """`tfsubmit show`: the run in a screenful, for people (--json has everything)."""
    from tfsubmit.pipeline.artifacts import human_size

    status = details.get("status", "?")
    lines = [f"Run {details.get('id') or run.id}: {status}"]
    if details.get("reason") and status in ("Failed", "Canceled"):
        lines.append(f"  reason      {details['reason']}")
    if details.get("queue_reason") and status == "Queued":
        lines.append(f"  waiting     {details['queue_reason']}")
    submitted = details.get("created")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(submitted)) if submitted else "-"
    duration = details.get("duration")
    took = (f"{duration:.1f} s from submit to end (training "
            f"{details.get('training_seconds', 0):.1f} s)"
            if isinstance(duration, int | float) and status in ("Completed", "Failed",
                                                               "Canceled")
            else f"{time.time() - submitted:.0f} s so far" if submitted else "-")
    lines += [f"  experiment  {details.get('experiment', '-')}",
              f"  submitted   {when}",
              f"  duration    {took}",
              f"  target      {_where(details)}; {details.get('topology') or '-'}; hosts "
              f"{', '.join(details.get('hosts') or []) or '-'}"]
    steps = details.get("steps") or {}
    if steps:
        lines.append("  steps       " + ", ".join(f"{name} {seconds:.1f} s"
                                                 for name, seconds in steps.items()))
    restarts = details.get("restarts") or []
    if restarts:
        lines.append(f"  restarts    {len(restarts)}: " + "; ".join(
            f"{r['task']} exit {r['exit_code']} ({r['action']})" for r in restarts[:5]))
    codes = details.get("exit_codes") or {}
    failed = {task: code for task, code in codes.items() if code not in (0, None)}
    if failed:
        lines.append("  exit codes  " + ", ".join(f"{t} {c}" for t, c in failed.items()))
    metrics = details.get("metrics") or {}
    if metrics:
        lines.append("  metrics     last value of each (tfsubmit show --json has them all)")
        for name, values in sorted(metrics.items()):
            last = values[-1] if isinstance(values, list) and values else values
            count = f" ({len(values)} values)" if isinstance(values, list) else ""
            lines.append(f"    {name:24} {_value(last)}{count}")
    outputs = details.get("outputs") or []
    if outputs:
        folder = details.get("run_folder")
        sizes = [(name, (Path(folder) / name).stat().st_size) for name in outputs
                 if folder and (Path(folder) / name).is_file()]
        total = sum(size for _, size in sizes)
        lines.append(f"  outputs     {len(outputs)} file(s), {human_size(total)}: tfsubmit "
                     f"download {details.get('id')} --prefix outputs/")
        for name, size in sizes[:8]:
            lines.append(f"    {name:40} {human_size(size)}")
        if len(outputs) > 8:
            lines.append(f"    ... and {len(outputs) - 8} more")
    error = (details.get("error") or {}).get("traceback") or []
    if error:
        lines.append("  traceback   (the script's own frames kept)")
        lines += [f"    {line}" for line in error[-12:]]
    if details.get("prefect_ui"):
        lines.append(f"  Prefect UI  {details['prefect_ui']}")
    lines.append(f"  TensorBoard tfsubmit tensorboard {details.get('id')}")
    if details.get("run_folder"):
        lines.append(f"  folder      {details['run_folder']}")
    return lines


# The longest string `show` prints whole (a metric may be megabytes of text).
SHOWN_CHARACTERS = 2000


def _shown(value):
    """Details as strict JSON for a terminal: NaN and infinities as the strings JSON
    readers know ("NaN", "Infinity"), long strings cut, saying how long they are."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, str) and len(value) > SHOWN_CHARACTERS:
        return (value[:SHOWN_CHARACTERS] + f"... [{len(value):,} characters in all; "
                "Run.get_metrics() or the run folder's files hold all of it]")
    if isinstance(value, dict):
        return {str(key): _shown(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_shown(item) for item in value]
    return value


def _logs(args: argparse.Namespace) -> int:
    import re

    from tfsubmit.api import open_run
    from tfsubmit.api.runs import printable

    try:
        pattern = re.compile(args.grep) if args.grep else None
    except re.error as exc:
        raise TfsubmitError(f"--grep: {args.grep!r} is not a regular expression: {exc}") from None
    task = args.task and (args.task if ":" in args.task or args.task == "tfsubmit"
                          else f"{args.task}:0")
    run = open_run(args.run, workspace=args.workspace)
    seen: set[str] = set()  # the tasks whose lines the log holds
    for line in run.stream_logs(follow=args.follow):
        tag = re.match(r"\[([^\]@]+)", line)
        if tag:
            seen.add(tag[1])
        if task and not _of_task(line, task):
            continue
        if pattern and not pattern.search(line):
            continue
        print(printable(line), flush=True)
    if task and task not in seen:
        raise TfsubmitError(f"--task: run {run.id} has no task {task} in its log; its tasks: "
                            f"{', '.join(sorted(seen)) or 'none yet'}")
    if not args.follow:
        return 0
    status = run.get_status()  # followed to its end: say how it ended, as submit does
    return 0 if status == "Completed" else 1


def _of_task(line: str, task: str) -> bool:
    """Whether a merged-log line is task's: `[worker:1@host] ...`, or `[tfsubmit] ...`."""
    if task == "tfsubmit":
        return line.startswith("[tfsubmit]")
    return line.startswith((f"[{task}@", f"[{task}]"))


def _cancel(args: argparse.Namespace) -> int:
    from tfsubmit.api import open_run

    run = open_run(args.run, workspace=args.workspace)
    before = run.get_status()
    run.cancel()
    print(f"Run {run.id}: {before} -> {run.get_status()}; no process of it is left")
    return 0


def _server(args: argparse.Namespace) -> int:
    from tfsubmit.service import server

    workspace = Workspace(args.workspace)
    if args.action == "start":
        info = server.ensure_server(workspace, port=args.port, database=args.database)
        print(f"Prefect API {info.api_url} (pid {info.pid}); UI {info.ui_url}")
    elif args.action == "stop":
        stopped = server.stop_server(workspace)
        print("stopped the embedded Prefect server" if stopped else "no embedded server running")
    else:
        info = server.server_status(workspace)
        state = "running" if info.running else "not running"
        where = "embedded" if info.embedded else "PREFECT_API_URL"
        print(f"{where} Prefect server {state}"
              + (f": UI {info.ui_url} (API {info.api_url})" if info.api_url else ""))
        if info.running:
            worker = server.worker_running(workspace, info.api_url)
            print(f"runs go to deployment {server.deployment_name(workspace)}, work pool "
                  f"{server.pool_name(workspace)}; its worker is "
                  + ("running" if worker else "not running (the next submission starts it)"))
        return 0 if info.running else 1
    return 0


def _connections(args: argparse.Namespace) -> int:
    """The SSH connections tfsubmit's pool keeps (targets/sshpool.py): list them, or close
    the idle ones (a host's sshd or key changed, say) instead of waiting keep_connections."""
    import ipaddress

    from tfsubmit.errors import TargetError
    from tfsubmit.targets import sshpool

    for address in args.addresses:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise TargetError(f"ADDRESS {address!r} is not an IP address; give a host as "
                              "its target lists it (hosts are IP addresses in targets.yaml)"
                              ) from None
    if args.addresses and args.action != "close":
        raise TargetError("ADDRESS is only for `tfsubmit connections close`")
    stats = sshpool.call("stats")
    kept = stats["kept"] if stats else []
    missing = [a for a in args.addresses if a not in {e["address"] for e in kept}]
    if missing:
        raise TargetError(
            f"no connection to {', '.join(missing)} is kept; kept: "
            + (", ".join(sorted({e["address"] for e in kept})) or "none")
            + " (see `tfsubmit connections`)")
    if not kept:
        print("No SSH connections are kept (tfsubmit's connection pool is not running)")
        return 0
    if args.action == "list":
        print(f"tfsubmit's SSH connection pool (pid {stats['pid']}): {len(kept)} kept "
              f"connection(s), {stats['connects']} made since it started")
        for entry in sorted(kept, key=lambda e: (e["address"], e["port"], e["id"])):
            print(f"  {_login(entry)}  {_use(entry)}  key {entry['key_file']}  "
                  + (f"host agent pid {', '.join(map(str, entry['agents']))}"
                     if entry["agents"] else
                     f"no host agent ({entry['agent_refused']})" if entry["agent_refused"]
                     else "no host agent yet"))
        return 0
    done = sshpool.call("close", addresses=args.addresses or None) or {"closed": [], "busy": []}
    if done["closed"]:
        print(f"Closed {len(done['closed'])} connection(s): "
              + ", ".join(_login(e) for e in done["closed"]))
    for entry in done["busy"]:
        print(f"Left open: {_login(entry)}, {entry['channels']} channel(s) in use by a "
              f"running job; it closes once idle for {entry['keep']:g} s (or cancel the run "
              "and close it again)")
    return 0


def _login(entry: dict) -> str:
    """A kept connection as `user@address:port`."""
    return f"{entry['user']}@{entry['address']}:{entry['port']}"


def _use(entry: dict) -> str:
    if entry["channels"]:
        return f"{entry['channels']} channel(s) in use"
    return f"idle {entry['idle_s']:.0f} s of {entry['keep']:g}"


def _pairs(values: list[str] | None, what: str) -> dict[str, str]:
    from tfsubmit.errors import JobSpecError

    pairs = {}
    for value in values or []:
        key, sep, text = value.partition("=")
        if not sep or not key:
            raise JobSpecError(f"{what} {value!r}: give KEY=VALUE")
        pairs[key] = text
    return pairs


def _register(args: argparse.Namespace) -> int:
    from tfsubmit.api.runs import run_of

    run = run_of(args.run, workspace=args.workspace)
    info = run.register_model(args.name, args.path, tags=_pairs(args.tag, "--tag"),
                              description=args.description or "")
    print(f"registered {info['name']}:{info['version']} from run {run.id} ({args.path})")
    return 0


def _models(args: argparse.Namespace) -> int:
    from tfsubmit.api.serving import models

    found = models(args.workspace, args.name)
    if args.name and not found:
        from tfsubmit.store.registry import ModelRegistry

        ModelRegistry(Workspace(args.workspace)).get(args.name)  # names those there are
    if not found:
        print("no models registered yet: tfsubmit register RUN --name NAME")
        return 0
    print(f"{'MODEL':28} {'VERSION':7} {'REGISTERED':20} {'RUN':44} TAGS")
    for info in found:
        when = time.strftime("%Y-%m-%d %H:%M:%S",
                             time.localtime(info.get("registered") or info.get("promoted", 0)))
        tags = ",".join(f"{k}={v}" for k, v in (info.get("tags") or {}).items()) or "-"
        print(f"{info['name']:28} {info['version']:<7} {when:20} {info.get('run_id') or '-':44} "
              f"{tags}")
    return 0


def _deploy(args: argparse.Namespace) -> int:
    from tfsubmit.api.serving import deploy

    endpoint = deploy(args.name, args.model, workspace=args.workspace,
                      score_script=args.score, source_directory=args.source,
                      target=args.target, port=args.port, auth=args.auth,
                      overwrite=args.overwrite, show_output=not args.quiet)
    details = endpoint.details()
    print(f"endpoint {endpoint.name}: {details['state']}, model {details['model']}")
    print(f"  scoring URI: {details['scoring_uri']}")
    if details["tfserving"]:
        name = details["model"].split(":")[0]
        print(f"  TF Serving:  POST {details['base_uri']}/v1/models/{name}:predict")
    return 0


def _endpoints(args: argparse.Namespace) -> int:
    from tfsubmit.api.serving import Endpoint, endpoints

    if args.action == "list":
        found = endpoints(args.workspace)
        if not found:
            print("no endpoints: tfsubmit deploy MODEL --name NAME")
            return 0
        print(f"{'ENDPOINT':24} {'STATE':12} {'MODEL':28} {'TARGET':12} SCORING URI")
        for state in found:
            print(f"{state['name']:24} {state['state']:12} {state['model']:28} "
                  f"{state['target']:12} {state['scoring_uri']}")
        return 0
    if not args.name:
        from tfsubmit.errors import JobSpecError

        raise JobSpecError(f"endpoints {args.action}: give the endpoint's name")
    endpoint = Endpoint(args.name, workspace=args.workspace)
    if args.action == "show":
        details = endpoint.details()
        details.pop("keys", None)
        print(json.dumps(details, indent=2))
    elif args.action == "logs":
        print(endpoint.get_logs(args.lines))
    else:
        endpoint.delete()
        print(f"deleted endpoint {args.name}; nothing of it runs (its log is kept under "
              "endpoints/.deleted/)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from tfsubmit import __version__

    parser = argparse.ArgumentParser(prog="tfsubmit", description=__doc__.split("\n")[0],
                                     epilog="RUN: a run id, a unique start of one, or `latest`."
                                     " Exit codes: 0 success, 1 the run Failed or was Canceled,"
                                     " 2 bad input or a tfsubmit error.")
    parser.add_argument("--version", action="version", version=f"tfsubmit {__version__}")
    parser.add_argument("--workspace", help="workspace folder (default: $TFSUBMIT_WORKSPACE "
                        "or ~/.tfsubmit)")
    commands = parser.add_subparsers(dest="command", required=True)

    submit = commands.add_parser("submit", help="submit a job or sweep YAML and follow it")
    submit.add_argument("job", help="path of the job YAML, or of a sweep YAML")
    submit.add_argument("--experiment", help="experiment name (default: the YAML's, or "
                        "'default')")
    submit.add_argument("--detach", action="store_true",
                        help="return once submitted (prints how to follow the run)")
    submit.add_argument("--deployment", metavar="FLOW/DEPLOYMENT",
                        help="run it as a flow run of this Prefect deployment (e.g. "
                        "submit-training/default), executed by the deployment's worker")
    submit.set_defaults(func=_submit)

    resume = commands.add_parser("resume", help="continue an interrupted sweep")
    resume.add_argument("run", help="run id, a unique start of one, or `latest`")
    resume.add_argument("--detach", action="store_true", help="return once resumed")
    resume.set_defaults(func=_resume)

    image = commands.add_parser("image", help="Docker images for docker targets")
    image.add_argument("action", choices=("bootstrap",),
                       help="bootstrap: build the Debian base image (debootstrap + import)")
    image.add_argument("--target", required=True, help="the docker target (targets.yaml)")
    image.set_defaults(func=_image)

    runs = commands.add_parser("runs", help="list runs, newest first")
    runs.add_argument("--experiment", help="only this experiment's runs")
    runs.add_argument("--limit", type=_positive, default=50,
                      help="at most this many runs, newest first (default 50)")
    runs.add_argument("--metric", help="add a column: each run's last value of this metric, "
                      "the best completed run of each experiment marked *")
    runs.add_argument("--goal", choices=("minimize", "maximize"), help="for --metric "
                      "(default: minimize for names with loss, err, mse or mae, else "
                      "maximize)")
    runs.set_defaults(func=_runs)

    show = commands.add_parser("show", help="a run in a screenful: status and reason, "
                               "duration, topology and hosts, steps, restarts, metrics, "
                               "outputs, links (--json: every detail)")
    show.add_argument("run", help="run id, a unique start of one, or `latest`")
    show.add_argument("--task", metavar="ROLE:INDEX",
                      help="metrics of this task (e.g. worker:1) instead of the chief's "
                      "(else worker 0's, else rank 0's)")
    show.add_argument("--json", action="store_true", help="every detail as JSON (Azure ML's "
                      "keys), as scripts read it")
    show.set_defaults(func=_show)

    down = commands.add_parser("download", help="copy a run's files here (outputs, logs, "
                               "images), keeping their paths")
    down.add_argument("run", help="run id, a unique start of one, or `latest`")
    down.add_argument("--prefix", help="only files whose paths start with this (outputs/)")
    down.add_argument("--to", default=".", help="the folder to copy into (default: here)")
    down.set_defaults(func=_download)

    board = commands.add_parser("tensorboard", help="serve TensorBoard over runs: their "
                                "metrics as scalars, and their own TensorBoard logs")
    board.add_argument("runs", nargs="*", metavar="RUN", help="run ids (or unique starts, "
                       "or `latest`)")
    board.add_argument("--experiment", help="every run of this experiment")
    board.add_argument("--sweep", help="the trials of this sweep, side by side")
    board.add_argument("--port", type=int, help="the port (default: a free one)")
    board.set_defaults(func=_tensorboard)

    logs = commands.add_parser("logs", help="print a run's merged log")
    logs.add_argument("run", help="run id, a unique start of one, or `latest`")
    logs.add_argument("--follow", "-f", action="store_true",
                      help="keep printing until it ends; then exit 0 if it Completed, else 1")
    logs.add_argument("--task", metavar="ROLE:INDEX",
                      help="only this task's lines, e.g. worker:1, ps:0, rank:2 (a bare role "
                      "means index 0), or `tfsubmit` for tfsubmit's own")
    logs.add_argument("--grep", metavar="REGEX", help="only lines this regular expression "
                      "matches (Python syntax)")
    logs.set_defaults(func=_logs)

    cancel = commands.add_parser("cancel", help="stop a run and all its processes")
    cancel.add_argument("run", help="run id, a unique start of one, or `latest`")
    cancel.set_defaults(func=_cancel)

    srv = commands.add_parser("server", help="the embedded Prefect server")
    srv.add_argument("action", choices=("start", "stop", "status"),
                     help="start it (if not running), stop it, or say whether it runs")
    srv.add_argument("--port", type=int, help="port for `start` (default: a free one)")
    srv.add_argument("--database", metavar="postgresql://USER:PASSWORD@HOST:PORT/DB",
                     help="for `start`: keep the server's data in PostgreSQL instead of its "
                     "own SQLite file (remembered for later starts; the URL is kept 0600)")
    srv.set_defaults(func=_server)

    conns = commands.add_parser("connections", help="the SSH connections kept between "
                                "submissions: list them, or close the idle ones")
    conns.add_argument("action", nargs="?", choices=("list", "close"), default="list",
                       help="list them (default), or close the idle ones: all, or those to "
                       "the ADDRESSes (a connection a running job uses stays open)")
    conns.add_argument("addresses", nargs="*", metavar="ADDRESS",
                       help="for `close`: only the connections to these hosts")
    conns.set_defaults(func=_connections)

    register = commands.add_parser("register", help="register a run's model (a file or "
                                   "folder it wrote) as the next version of a named model")
    register.add_argument("run", help="run id, a unique start of one, or `latest`")
    register.add_argument("--name", required=True, help="the model's name")
    register.add_argument("--path", default="outputs",
                          help="the file or folder, relative to the run (default: outputs)")
    register.add_argument("--tag", action="append", metavar="KEY=VALUE", help="a tag (repeat)")
    register.add_argument("--description", help="a line saying what this version is")
    register.set_defaults(func=_register)

    mods = commands.add_parser("models", help="list registered models and their versions")
    mods.add_argument("name", nargs="?", help="only this model's versions")
    mods.set_defaults(func=_models)

    dep = commands.add_parser("deploy", help="serve a registered model as an endpoint (a "
                              "deploy-model flow run), or update one with --overwrite")
    dep.add_argument("model", metavar="MODEL[:VERSION]", help="a registered model (latest "
                     "version without :VERSION)")
    dep.add_argument("--name", required=True, help="the endpoint's name (3-32 of a-z, 0-9, -)")
    dep.add_argument("--target", default="local", help="local (default), or an SSH or "
                     "docker target of targets.yaml")
    dep.add_argument("--score", metavar="SCRIPT", help="a scoring script with init() and "
                     "run(raw_data) (Azure's contract); without one, TensorFlow Serving's "
                     "REST API serves the SavedModel or Keras model")
    dep.add_argument("--source", metavar="DIR", help="the scoring script's folder (default: "
                     "the script's own)")
    dep.add_argument("--port", type=int, help="the port to serve on (default: a free one)")
    dep.add_argument("--auth", action="store_true", help="require a key (Authorization: "
                     "Bearer KEY); `tfsubmit endpoints show` does not print keys, "
                     "Endpoint.get_keys() does")
    dep.add_argument("--overwrite", action="store_true", help="replace what endpoint NAME "
                     "serves (an update: no request refused)")
    dep.add_argument("--quiet", action="store_true", help="do not print the deployment's log")
    dep.set_defaults(func=_deploy)

    eps = commands.add_parser("endpoints", help="list endpoints; show, logs or delete one")
    eps.add_argument("action", nargs="?", choices=("list", "show", "logs", "delete"),
                     default="list", help="list them (default); show one's state as JSON, "
                     "print its log, or delete it (nothing of it left running)")
    eps.add_argument("name", nargs="?", help="the endpoint (for show, logs, delete)")
    eps.add_argument("--lines", type=_positive, default=200, help="logs: the last N lines")
    eps.set_defaults(func=_endpoints)
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except TfsubmitError as exc:
        print(f"tfsubmit: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `tfsubmit show RUN | head`: the reader has had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
