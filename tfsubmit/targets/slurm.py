"""The Slurm target: each attempt of a run is one `sbatch` job on a cluster the team shares.

    my-slurm:
      type: slurm
      workdir: /shared/tfsubmit        # seen by this machine and every node, at this path
      partition: gpu                   # optional; account, qos, constraint likewise
      sbatch_args: ["--exclusive"]
      env: {SLURM_CONF: /etc/slurm/slurm.conf}
      login: {address: 10.0.0.5, user: train, key_file: ~/.ssh/id_ed25519}   # optional

How a run goes:
- the environment is built once, here, in the shared `env_cache` (`<workdir>/envs`): nodes
  never build, later jobs reuse it; tfsubmit's runtime is copied to `<workdir>/runtime`;
- provision stages the snapshot in `<workdir>/runs/<run id>/work` and submits the batch job
  (`sbatch --parsable`, its script kept in the run's `slurm/` folder); while Slurm keeps it
  PENDING the run is Queued, Slurm's reason in its log; once it runs, the nodes are the
  ones Slurm gave, named and addressed as `scontrol` says;
- the batch job runs `tfsubmit.runtime.slurm_gang`, which starts each task the launchers
  planned (one `srun` step per TensorFlow task, or `mpirun` launching through Slurm),
  on the node it was planned on, and writes each task's output and exit code to the shared
  run folder, which this side tails (live tagged lines, metrics);
- a requeue (preemption, `scontrol requeue`) ends the tasks: this side restarts them per
  `max_restarts` once the job runs again (each requeue listed under restarts); the job
  that failed or ended (a node lost, Slurm's time limit) is replaced by a new `sbatch`;
- the end of the run releases the batch job, which sweeps its nodes for leftovers of the
  run; a cancel stops the tasks, then `scancel`s the job and waits until it left the queue.

Every Slurm command has a timeout (`command_timeout`); a failing one is named with Slurm's
own message.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tfsubmit.errors import TargetError
from tfsubmit.spec.environment import Environment, EnvironmentSpec
from tfsubmit.spec.job import TrainingJob
from tfsubmit.spec.process import LaunchOptions, Node, ProcessSpec
from tfsubmit.store.cancel import CancelFlag
from tfsubmit.store.layout import NODE_FOLDERS
from tfsubmit.store.package import runtime_dir
from tfsubmit.store.runlog import RunLog
from tfsubmit.store.snapshots import materialize
from tfsubmit.targets.base import (
    Provisioned,
    ProvisionRequest,
    merged_lines,
    refuse_custom_image,
)
from tfsubmit.targets.envbuild import MARKER, resolve_environment
from tfsubmit.targets.local import LocalFolders, base_env
from tfsubmit.targets.settings import SlurmTargetConfig

GANG_MODULE = "tfsubmit.runtime.slurm_gang"
# Slurm job states in which the job holds (or is about to hold) its nodes.
ACTIVE = {"RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "STAGE_OUT", "SIGNALING",
          "RESIZING"}
WAITING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SPECIAL_EXIT"}
# What a task's end means when the job ended under it (the state Slurm shows).
ENDED_BY = {
    "TIMEOUT": "Slurm's time limit (--time) ended the job",
    "NODE_FAIL": "a node of the job failed (Slurm: NODE_FAIL)",
    "PREEMPTED": "the job was preempted",
    "CANCELLED": "the job was canceled in Slurm (scancel outside tfsubmit)",
    "BOOT_FAIL": "a node of the job failed to boot (Slurm: BOOT_FAIL)",
    "OUT_OF_MEMORY": "the job ran out of memory (Slurm: OUT_OF_MEMORY)",
    "DEADLINE": "the job reached its deadline",
}
# Exit code of a task whose job was requeued or ended under it (as if sent SIGTERM).
ENDED_CODE = 143
# Seconds the batch job may take to end by itself once released, before it is scancel'ed.
RELEASE_SECONDS = 20.0
GONE_SECONDS = 60.0
# A pending job is looked at every FIRST_POLL seconds for its first FIRST_SECONDS.
FIRST_POLL, FIRST_SECONDS = 0.2, 10.0


@dataclass(frozen=True)
class JobInfo:
    """One job as `scontrol show job` (or `sacct`) shows it."""

    job_id: str
    state: str
    reason: str = ""
    nodes: tuple[str, ...] = ()
    restarts: int = 0
    node_list: str = ""

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def waiting(self) -> bool:
        return self.state in WAITING

    @property
    def ended(self) -> bool:
        return not (self.active or self.waiting)


class SlurmCommands:
    """Runs Slurm's commands here, or on the login node over SSH; each with a timeout."""

    def __init__(self, config: SlurmTargetConfig) -> None:
        self.config = config
        self._conn = None
        self._lock = threading.Lock()

    @property
    def where(self) -> str:
        login = self.config.login
        return f" on {login.user}@{login.address}" if login else ""

    def run(self, argv: list[str], *, check: bool = True, timeout: float | None = None
            ) -> subprocess.CompletedProcess:
        timeout = timeout or self.config.command_timeout
        shown = shlex.join(argv)
        if self.config.login is None:
            try:
                done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                      env={**base_env(), **self.config.env},
                                      stdin=subprocess.DEVNULL)
            except FileNotFoundError:
                raise TargetError(f"`{argv[0]}` not found on this machine: install Slurm's "
                                  "client commands (Debian: slurm-client), or set `login:` "
                                  "on the target to run them on a login node") from None
            except subprocess.TimeoutExpired:
                raise TargetError(f"`{shown}` timed out after {timeout:g} s "
                                  "(command_timeout); is slurmctld answering?") from None
        else:
            done = self._over_ssh(argv, timeout)
        if check and done.returncode != 0:
            message = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
            raise TargetError(f"`{shown}`{self.where} failed (exit {done.returncode}): "
                              f"{message or 'no message'}")
        return done

    def _over_ssh(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess:
        import paramiko

        from tfsubmit.targets.settings import SSHHost, SSHTargetConfig
        from tfsubmit.targets.ssh import Connection, shell_join

        login = self.config.login
        with self._lock:
            if self._conn is None:
                ssh = SSHTargetConfig(hosts=[SSHHost(address=login.address)], user=login.user,
                                      port=login.port, key_file=login.key_file,
                                      known_hosts=login.known_hosts,
                                      connect_timeout=login.connect_timeout)
                conn = Connection(ssh, ssh.hosts[0], threading.Lock())
                conn.connect()
                self._conn = conn
            conn = self._conn
        command = shell_join(argv)
        if self.config.env:
            command = f"env {shell_join([f'{k}={v}' for k, v in self.config.env.items()])} " \
                      + command
        try:
            channel = conn.open_channel(command, timeout=timeout)
            channel.shutdown_write()
            out = channel.makefile("rb").read().decode(errors="replace")
            err = channel.makefile_stderr("rb").read().decode(errors="replace")
            code = channel.recv_exit_status()
        except (paramiko.SSHException, OSError, TimeoutError) as exc:
            raise TargetError(f"`{shell_join(argv)}` on {conn.where} failed: "
                              f"{exc or f'timed out after {timeout:g} s'}") from None
        return subprocess.CompletedProcess(argv, code, out, err)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def parse_job(text: str) -> dict[str, str]:
    """`scontrol -o show job` fields (KEY=VALUE words)."""
    return dict(re.findall(r"(\w+)=(\S*)", text))


def tasks_per_node(job: TrainingJob) -> int:
    """What the launchers will place on each node (round-robin for TF_CONFIG tasks)."""
    if job.tf_task_count:
        return math.ceil(job.tf_task_count / job.node_count)
    return job.process_count_per_node


def time_limit(seconds: float | None) -> str | None:
    """Slurm's --time for max_run_duration_seconds: whole minutes, a minute of room past
    tfsubmit's own limit (which stops the run first, and says why)."""
    if seconds is None:
        return None
    return str(math.ceil(seconds / 60) + 1)


def batch_script(job: TrainingJob, config: SlurmTargetConfig, *, run_id: str, state: Path,
                 python: str, runtime: str) -> str:
    """The batch job of one attempt: its options, then the gang runner."""
    options = [f"--job-name=tfsubmit-{run_id}", f"--nodes={job.node_count}",
               f"--ntasks-per-node={tasks_per_node(job)}",
               f"--output={state}/batch-%j.out", "--open-mode=append", "--requeue",
               f"--chdir={state}"]
    limit = time_limit(job.max_run_duration_seconds)
    if limit:
        options.append(f"--time={limit}")
    if job.use_gpu:
        options.append(f"--gres=gpu:{tasks_per_node(job)}")
    for name in ("partition", "account", "qos", "constraint"):
        value = getattr(config, name)
        if value:
            options.append(f"--{name}={value}")
    if config.cpus_per_task:
        options.append(f"--cpus-per-task={config.cpus_per_task}")
    lines = ["#!/bin/bash", f"# tfsubmit run {run_id}: {job.topology}"]
    lines += [f"#SBATCH {option}" for option in options]
    lines += [
        f"export PYTHONPATH={shlex.quote(runtime)}",
        f"exec {shlex.quote(python)} -m {GANG_MODULE} {shlex.quote(str(state))}",
        "",
    ]
    return "\n".join(lines)


class SlurmTask:
    """A task of the run, started in the allocation by the gang runner."""

    def __init__(self, target: SlurmTarget, spec: ProcessSpec, number: int) -> None:
        self.spec = spec
        self.target = target
        self.number = number
        self.pid = f"{target.job_id}:{number}"
        self.ended_by: str | None = None  # why it ended, when not by itself

    def _file(self, folder: str) -> Path:
        return self.target.state / folder / str(self.number)

    def lines(self) -> Iterator[str]:
        """The task's lines from its two files (the gang keeps stdout and stderr apart),
        stderr's as StderrLine, until it has ended."""
        done = threading.Event()

        def stdout() -> Iterator[str]:
            try:
                yield from self._tail("out", lambda: self.poll() is not None)
            finally:
                done.set()

        yield from merged_lines(stdout(), self._tail("err", done.is_set))

    def _tail(self, suffix: str, ended) -> Iterator[str]:
        path = self.target.state / "out" / f"{self.number}.{suffix}"
        handle = None
        pending = ""
        try:
            while True:
                if handle is None and path.exists():
                    handle = path.open("r", errors="replace")
                chunk = handle.read() if handle else ""
                if chunk:
                    pending += chunk
                    *complete, pending = pending.split("\n")
                    yield from complete
                    continue
                if ended():
                    if handle is None and path.exists():
                        handle = path.open("r", errors="replace")
                    if handle:
                        pending += handle.read()
                    if pending:
                        yield from pending.rstrip("\n").split("\n")
                    return
                time.sleep(0.1)
        finally:
            if handle:
                handle.close()

    def _code(self) -> int | None:
        try:
            return int(self._file("exit").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def poll(self) -> int | None:
        code = self._code()
        if code == 0:
            return 0
        # A failure is rare: read the job afresh, to tell one Slurm caused (a requeue).
        info = self.target.info(fresh=code is not None)
        if info is None or info.job_id != self.pid.split(":")[0]:
            self.ended_by = None if code is not None else "the Slurm job is gone"
            return ENDED_CODE if code is None else code
        try:
            attempt = int(self._file("begun").read_text() or 0)
        except (FileNotFoundError, ValueError):
            attempt = None
        if attempt is not None and (info.restarts > attempt or info.waiting):
            # Slurm requeued the job under it (the gang runner saw a SIGTERM, if anything).
            self.ended_by = (f"the Slurm job was requeued (restart {info.restarts})"
                             + self.target.node_trouble())
            return code if code is not None else ENDED_CODE
        if code is not None:
            if code != 0 and info.state in ENDED_BY:
                # The task failed because Slurm ended the job under it (its peers were
                # signalled): that is the cause, not the task's error.
                self.ended_by = ENDED_BY[info.state] + self.target.node_trouble()
            return code
        if info.ended:
            try:  # its exit code may have landed just before the job ended
                return int(self._file("exit").read_text())
            except (FileNotFoundError, ValueError):
                pass
            self.ended_by = ENDED_BY.get(info.state, f"the Slurm job ended ({info.state})") \
                + self.target.node_trouble()
            return ENDED_CODE
        return None

    def signal_group(self, sig: int) -> None:
        if self._file("exit").exists():
            return
        try:
            (self.target.state / "stop" / str(self.number)).write_text(str(int(sig)))
        except OSError:
            pass


class SlurmTarget(LocalFolders):
    """A Slurm cluster reached by its commands; files through the shared `workdir`."""

    def __init__(self, name: str, config: SlurmTargetConfig) -> None:
        self.name = name
        self.config = config
        self.workdir = Path(config.workdir).expanduser()
        self.commands = SlurmCommands(config)
        self.job_id = ""
        self.run_id = ""
        self.state = Path()
        self._request: ProvisionRequest | None = None
        self._nodes: list[Node] = []
        self._count = 0
        self._info: JobInfo | None = None
        self._info_at = 0.0
        self._info_lock = threading.Lock()
        self._released = False
        self._jobs: list[str] = []  # one per attempt that needed a new sbatch

    # -- before the run --------------------------------------------------------------------------

    def hosts(self) -> list[Node]:
        return []  # the nodes are Slurm's to choose, when the job starts

    def admit(self, job: TrainingJob) -> None:
        refuse_custom_image(job, self.name)

    def prepare_environment(self, job: TrainingJob, spec: EnvironmentSpec, *, cache: Path,
                            log: RunLog, cancel: CancelFlag) -> Environment:
        """Built once, here, in the shared env_cache, which every node sees."""
        shared = Path(self.config.env_cache or self.workdir / "envs").expanduser()
        if not (shared / spec.hash / MARKER).exists():
            log.event(f"environment {spec.hash}: building in {shared} for every node "
                      f"({', '.join(spec.requirements)})")
        try:
            env = resolve_environment(spec, shared, cancel=cancel,
                                      on_line=lambda line: log.write(f"[tfsubmit:env] {line}"))
        except PermissionError as exc:
            raise TargetError(f"env_cache of target {self.name!r}: cannot write {exc.filename} "
                              "(it must be a shared folder this user can write)") from None
        log.event(f"environment {env.hash}: {env.how()} ({env.python})")
        return env

    def provision(self, request: ProvisionRequest) -> Provisioned:
        """Stage the run in the shared workdir, submit the batch job, wait until it runs."""
        self._request = request
        self.run_id = request.run_id
        run_dir = self.workdir / "runs" / request.run_id
        self.state = run_dir / "slurm"
        work = run_dir / "work"
        try:
            for name in NODE_FOLDERS:
                (work / name).mkdir(parents=True, exist_ok=True)
            for name in ("start", "begun", "out", "exit", "stop"):
                (self.state / name).mkdir(parents=True, exist_ok=True)
            materialize(request.snapshot, request.store, work)
            runtime = runtime_dir(self.workdir / "runtime")
        except PermissionError as exc:
            raise TargetError(f"workdir of target {self.name!r}: cannot write {exc.filename}; "
                              "it must be a shared folder this user can write") from None
        self._python = request.environment.python
        self._runtime = str(runtime)
        self._work = str(work)
        info = self._submit_and_wait()
        self._nodes = self._nodes_of(info)
        return Provisioned(self._nodes, dict.fromkeys((n.host for n in self._nodes),
                                                      request.environment))

    def _submit_and_wait(self) -> JobInfo:
        """One attempt: sbatch, then wait (the run Queued) until the job runs."""
        request = self._request
        script = batch_script(request.job, self.config, run_id=self.run_id, state=self.state,
                              python=self._python, runtime=self._runtime)
        path = self.state / f"attempt-{len(self._jobs) + 1}.sh"
        path.write_text(script)
        done = self.commands.run(["sbatch", "--parsable", *self.config.sbatch_args, str(path)])
        self.job_id = done.stdout.strip().split(";")[0]
        if not self.job_id.isdigit():
            raise TargetError(f"sbatch{self.commands.where} answered {done.stdout.strip()!r}, "
                              "not a job id")
        self._jobs.append(self.job_id)
        request.note(slurm_job_id=self.job_id, slurm_jobs=list(self._jobs))
        request.log.event(f"Slurm job {self.job_id} submitted ({path.name}: "
                          f"{request.job.node_count} node(s) x "
                          f"{tasks_per_node(request.job)} task(s))")
        self._info = None
        return self.wait_running()

    def wait_running(self) -> JobInfo:
        """Until the job runs; the run Queued meanwhile, Slurm's reason in the log."""
        request = self._request
        began = time.monotonic()
        shown = None
        while True:
            if request.cancel.is_set():
                raise TargetError(f"canceled while Slurm job {self.job_id} waited in the queue")
            info = self.info(fresh=True)
            if info is None:
                raise TargetError(f"Slurm job {self.job_id} disappeared from the queue "
                                  "before it started")
            if info.active and info.nodes:
                waited = time.monotonic() - began
                request.queued(None)
                request.log.event(f"Slurm job {self.job_id} running on "
                                  f"{', '.join(info.nodes)} after {waited:.1f} s in the queue")
                return info
            if info.ended:
                raise TargetError(f"Slurm job {self.job_id} ended ({info.state}, "
                                  f"{info.reason or 'no reason given'}) before it started; "
                                  f"see {self.state}/batch-{self.job_id}.out")
            if (info.state, info.reason) != shown:
                shown = (info.state, info.reason)
                why = f"Slurm job {self.job_id} {info.state.lower()}" + (
                    f": {info.reason}" if info.reason else "")
                request.queued(why)
                request.log.event(why)
            # Most jobs start within seconds: look often at first, then every poll_seconds.
            soon = time.monotonic() - began < FIRST_SECONDS
            request.cancel.wait(min(FIRST_POLL, self.config.poll_seconds) if soon
                                else self.config.poll_seconds)

    def info(self, fresh: bool = False) -> JobInfo | None:
        """The job's state, read from Slurm at most every poll_seconds."""
        with self._info_lock:
            if fresh or time.monotonic() - self._info_at >= self.config.poll_seconds:
                self._info = self._read_info(self.job_id)
                self._info_at = time.monotonic()
            return self._info

    def _read_info(self, job_id: str) -> JobInfo | None:
        done = self.commands.run(["scontrol", "-o", "show", "job", job_id], check=False)
        if done.returncode == 0 and "JobState=" in done.stdout:
            fields = parse_job(done.stdout.splitlines()[0])
            node_list = fields.get("NodeList", "")
            nodes: tuple[str, ...] = ()
            if node_list and node_list != "(null)":
                if node_list == getattr(self._info, "node_list", None):
                    nodes = self._info.nodes
                else:
                    nodes = tuple(self.commands.run(
                        ["scontrol", "show", "hostnames", node_list]).stdout.split())
            return JobInfo(job_id, fields.get("JobState", "UNKNOWN"),
                           fields.get("Reason", "") if fields.get("Reason") != "None" else "",
                           nodes, int(fields.get("Restarts", "0") or 0), node_list)
        if "Invalid job id" not in (done.stderr + done.stdout):
            raise TargetError(f"`scontrol show job {job_id}`{self.commands.where} failed: "
                              f"{(done.stderr or done.stdout).strip()}")
        return self._accounted(job_id)  # past MinJobAge: only accounting knows it

    def _accounted(self, job_id: str) -> JobInfo | None:
        for argv in (["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "State"],
                     ["sacct", "-c", "-n", "-P", "-j", job_id, "-o", "State"]):
            try:
                done = self.commands.run(argv, check=False)
            except TargetError:
                return None
            if done.returncode == 0 and done.stdout.strip():
                state = done.stdout.split()[-1].split()[0].upper()
                return JobInfo(job_id, state.rstrip("+"))
        return None

    def _nodes_of(self, info: JobInfo) -> list[Node]:
        shown = self.commands.run(["scontrol", "-o", "show", "node", ",".join(info.nodes)]).stdout
        addresses = dict(re.findall(r"NodeName=(\S+) .*?NodeAddr=(\S+)", shown))
        gpus = dict(re.findall(r"NodeName=(\S+) .*?Gres=gpu:(?:\w+:)?(\d+)", shown))
        return [Node(host=name, workdir=self._work, slots=tasks_per_node(self._request.job),
                     gpus=int(gpus.get(name, 0)), python=self._python, runtime=self._runtime,
                     address=addresses.get(name, name))
                for name in info.nodes]

    def scheduler_cause(self) -> str | None:
        """Why Slurm ended the run's job, when it did (canceled outside tfsubmit, a node
        lost, its time limit): the root cause of tasks failing under it; else None."""
        try:
            info = self.info(fresh=True)
        except TargetError:
            return None
        if info is None or info.state not in ENDED_BY:
            return None
        return ENDED_BY[info.state] + self.node_trouble()

    def node_trouble(self) -> str:
        """'; node2 DOWN (reason)' for each node of the run that Slurm took out of service
        (down, drained, failing, not responding); '' when none is."""
        if not self._nodes:
            return ""
        troubled = []
        names = ",".join(node.host for node in self._nodes)
        try:
            shown = self.commands.run(["scontrol", "-o", "show", "node", names],
                                      check=False).stdout
        except TargetError:
            return ""
        for line in shown.splitlines():
            fields = parse_job(line)
            state = fields.get("State", "")
            if re.search(r"DOWN|DRAIN|FAIL|NOT_RESPONDING", state):
                reason = re.search(r" Reason=(.*?)(?: \[|$)", line)
                troubled.append(f"{fields.get('NodeName')} {state}"
                                + (f" ({reason[1]})" if reason else ""))
        for out in (self.state / "out").glob("*.*"):  # srun says which node it lost
            try:
                text = out.read_text(errors="replace")
            except OSError:
                continue
            for node in re.findall(r"srun: error: Node failure on (\S+)", text):
                said = f"Slurm: node failure on {node}"
                if said not in troubled:
                    troubled.append(said)
        return "; " + ", ".join(troubled) if troubled else ""

    def launch_options(self) -> LaunchOptions:
        as_root = (self.config.login.user == "root") if self.config.login else os.geteuid() == 0
        return LaunchOptions(as_root=as_root, in_allocation=True)

    # -- processes -------------------------------------------------------------------------------

    def start(self, spec: ProcessSpec) -> SlurmTask:
        """Ask the gang runner to start `spec` on its node; a job that ended or was requeued
        first runs again (a new sbatch, or the requeued job running again)."""
        info = self.info(fresh=True)
        deadline = time.monotonic() + GONE_SECONDS
        while info is not None and info.state == "COMPLETING" and time.monotonic() < deadline:
            time.sleep(0.2)  # ending its steps (a requeue, say): see what comes next
            info = self.info(fresh=True)
        if info is None or info.ended:
            self._request.log.event(f"Slurm job {self.job_id} is "
                                    f"{info.state if info else 'gone'}: submitting a new one")
            self._submit_and_wait()
        elif not info.active:
            self.wait_running()
        self._count += 1
        planned = [node.host for node in self._nodes]
        task = {
            "name": f"{spec.role}-{spec.index}",
            "node": planned.index(spec.host) if spec.host in planned else 0,
            "argv": list(spec.argv), "env": dict(spec.env), "cwd": spec.cwd,
            "here": spec.role == "mpirun",  # mpirun launches its daemons through Slurm
            "planned_names": planned,
            "planned_addresses": [node.address for node in self._nodes],
        }
        request = self.state / "start" / f"{self._count}.json"
        tmp = request.with_name(f".{request.name}.tmp")
        tmp.write_text(json.dumps(task))
        os.replace(tmp, request)
        return SlurmTask(self, spec, self._count)

    def leftovers(self, run_id: str) -> list[tuple[str, int | str]]:
        """Steps of the run's job still running in Slurm (the tasks' own steps)."""
        job = self.job_id or self._find_job(run_id)
        if not job:
            return []
        done = self.commands.run(["squeue", "-h", "-s", "-j", job, "-o", "%i %j %N"],
                                 check=False)
        found = []
        for line in done.stdout.splitlines():
            step, name, nodes = (line.split() + ["", "", ""])[:3]
            if step.endswith((".batch", ".extern")) or name == "tfsubmit-sweep":
                continue
            found.append((nodes, step))
        return found

    def kill(self, processes: list[tuple[str, int | str]]) -> None:
        for _, step in processes:
            self.commands.run(["scancel", "--signal=KILL", str(step)], check=False)

    def attach(self, run_id: str, nodes: list[Node]) -> list[str]:
        """After the runner died: find the run's job by its name; the files are shared."""
        self.run_id = run_id
        self.job_id = self._find_job(run_id)
        self.state = self.workdir / "runs" / run_id / "slurm"
        self._nodes = list(nodes)
        return []

    def _find_job(self, run_id: str) -> str:
        done = self.commands.run(["squeue", "-h", "-n", f"tfsubmit-{run_id}", "-o", "%i"],
                                 check=False)
        jobs = done.stdout.split()
        return jobs[-1] if jobs else ""

    def collect(self, node: Node, dest: Path) -> list[str]:
        """The shared work folder (outputs, logs, metrics) and Slurm's files into the run."""
        first = bool(self._nodes) and node is self._nodes[0]  # all nodes share one folder
        if first:
            self.close_job()  # its batch log complete (the sweep's lines too) before copying
        problems = super().collect(node, dest)
        if first and self.state.is_dir():
            slurm = dest / "logs" / "slurm"
            slurm.mkdir(parents=True, exist_ok=True)
            for path in [*self.state.glob("batch-*"), *self.state.glob("attempt-*")]:
                _copy(path, slurm / path.name)
            for path in (self.state / "out").glob("*.*"):  # <n>.out, <n>.err
                _copy(path, slurm / f"task-{path.name}")
        return problems

    def close(self) -> None:
        """Release the batch job (it sweeps its nodes and ends); scancel it if it does not
        end by itself, or at once after a cancel; then wait until it left the queue."""
        try:
            self.close_job()
        finally:
            self.commands.close()

    def close_job(self) -> None:
        """End the run's batch job, once."""
        if self.job_id and not self._released:
            self._released = True
            self._end_job()

    def _end_job(self) -> None:
        log = self._request.log if self._request else None
        try:
            (self.state / "release").write_text(str(time.time()))
        except OSError:
            pass
        canceled = self._request is not None and self._request.cancel.is_set()
        deadline = time.monotonic() + (0 if canceled else RELEASE_SECONDS)
        info = self.info(fresh=True)
        while info is not None and not info.ended and time.monotonic() < deadline:
            if info.waiting:
                break  # requeued: it would only run again
            time.sleep(0.2)
            info = self.info(fresh=True)
        if info is not None and not info.ended:
            if log:
                log.event(f"scancel {self.job_id}")
            self.commands.run(["scancel", self.job_id], check=False)
        deadline = time.monotonic() + GONE_SECONDS
        while info is not None and not info.ended and time.monotonic() < deadline:
            time.sleep(0.2)
            info = self.info(fresh=True)
        if log:
            if info is None or info.ended:
                log.event(f"Slurm job {self.job_id} ended "
                          f"({info.state if info else 'gone'}); none of it is in the queue")
            else:
                log.event(f"Slurm job {self.job_id} still {info.state} {GONE_SECONDS:g} s "
                          "after scancel; check the cluster")
        batch = self.state / f"batch-{self.job_id}.out"
        if log and batch.exists():
            for line in batch.read_text(errors="replace").splitlines():
                if "leftover" in line or "killed" in line:
                    log.event(f"slurm: {line}")


def _copy(source: Path, dest: Path) -> None:
    try:
        dest.write_bytes(source.read_bytes())
    except OSError:
        pass

