"""Run a job's processes on a target: stream their lines, restart failed ones per policy,
watch for hangs, and stop them all on failure, cancel or timeout (TERM to each group, a
grace period, then KILL), then check nothing of the run is left."""

from __future__ import annotations

import queue
import re
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tfsubmit.errors import TfsubmitError
from tfsubmit.spec.process import ProcessSpec
from tfsubmit.store.runlog import RunLog, StderrLine
from tfsubmit.system.processes import still_running, terminate_then_kill
from tfsubmit.targets.base import Handle, Target

# How long killed leftovers may take to disappear before the run says they survived.
LEFTOVER_SECONDS = 5.0

# Log records TensorFlow, absl and gRPC print while they start; they are not progress.
_STARTUP_NOISE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] "  # TensorFlow's C++ log
    r"|[IWEF]\d{4} \d\d:\d\d:\d+\.\d+\s"                  # absl / glog / gRPC
    r"|WARNING: All log messages before absl::InitializeLog\(\)"
    r"|(INFO|WARNING):(tensorflow|absl):"                   # their Python loggers
    r"|\s*$)"
)


# What TensorFlow prints while it starts, below an error: kept out of the merged log (it
# stays in each process's own log file) while the job's TF_CPP_MIN_LOG_LEVEL is 2 or 3,
# which it is unless the job sets it (launchers.base.QUIET_TF_LOG_LEVEL). TensorFlow
# prints some of it before that variable is read (absl's pre-init lines, oneDNN's notice).
_QUIET_NOISE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IW] "
    r"|[IW]\d{4} \d\d:\d\d:\d+\.\d+\s"
    r"|WARNING: All log messages before absl::InitializeLog\(\)"
    r"|To enable the following instructions: .*rebuild TensorFlow"
    r"|This TensorFlow binary is optimized to use available CPU instructions)"
)


def quiets_tensorflow(spec: ProcessSpec) -> bool:
    """Whether the process runs with TensorFlow's start-up lines quieted."""
    level = spec.env.get("TF_CPP_MIN_LOG_LEVEL")
    for i, arg in enumerate(spec.argv[:-1]):  # mpirun passes it on with -x NAME=VALUE
        if arg == "-x" and spec.argv[i + 1].startswith("TF_CPP_MIN_LOG_LEVEL="):
            level = spec.argv[i + 1].split("=", 1)[1]
    return level in ("2", "3")


def is_progress(line: str) -> bool:
    """Whether a job's line shows it has got past start-up (anything but library noise)."""
    return not _STARTUP_NOISE.match(line)


@dataclass(frozen=True)
class RestartPolicy:
    """What to do when a task fails: restart it alone, restart the whole gang, or fail."""

    max_restarts: int = 0
    permanent_exit_codes: frozenset[int] = frozenset()
    alone: Callable[[ProcessSpec], bool] = lambda spec: False

    def decide(self, spec: ProcessSpec | None, code: int | None, restarts_done: int) -> str:
        """'task', 'gang' or 'fail'. spec None means the whole job (a hang)."""
        if code is not None and code in self.permanent_exit_codes:
            return "fail"
        if restarts_done >= self.max_restarts:
            return "fail"
        if spec is not None and self.alone(spec):
            return "task"
        return "gang"


@dataclass
class ProcessResult:
    role: str
    index: int
    host: str
    exit_code: int | None
    log_file: str


@dataclass
class Outcome:
    status: str  # Completed, Failed or Canceled
    reason: str | None
    results: list[ProcessResult] = field(default_factory=list)
    duration: float = 0.0
    restarts: list[dict] = field(default_factory=list)

    def describe(self) -> str:
        return self.status + (f": {self.reason}" if self.reason else "")


def supervise(
    target: Target,
    specs: list[ProcessSpec],
    *,
    run_id: str,
    log: RunLog,
    log_dir: Path,
    cancel: threading.Event,
    max_seconds: float | None = None,
    grace_seconds: float = 10.0,
    on_started: Callable[[list[Handle]], None] = lambda handles: None,
    decides: Callable[[ProcessSpec], bool] = lambda spec: True,
    policy: RestartPolicy = RestartPolicy(),
    hang_seconds: float | None = None,
    startup_seconds: float | None = None,
    activity: Callable[[], float] = lambda: 0.0,
    silence_seconds: float | None = None,
    stall_hint: str | None = None,
) -> Outcome:
    """Start every spec, stream its output, and wait until the job is done or must stop.

    The job has succeeded when every process that `decides` exits 0 (by default: all of
    them); the others (parameter servers, say) are then stopped. A failing process is
    restarted alone or with the whole gang as `policy` says, else it fails the job. With
    `hang_seconds`, a job that prints no line and logs no metric (`activity()` returns the
    time of the newest metric) for that long is treated as hung; that watch starts at the
    job's first progress (a metric, or a line that is not library start-up noise), and the
    silence before it is bounded by `startup_seconds` instead.

    With `silence_seconds`, the log says (once per silence) when a running task has printed
    nothing that long while another task ended or printed since, naming it; and, with
    `stall_hint`, says that hint when no task ended and no metric came that long.
    """
    run = _Run(target, specs, run_id, log, log_dir, cancel, grace_seconds)
    started = time.monotonic()
    ended = False
    try:
        run.start_all()
        on_started(run.handles)
        run.silence_seconds, run.stall_hint = silence_seconds, stall_hint
        status, reason = run.watch(started, max_seconds, decides, policy, hang_seconds,
                                   startup_seconds, activity)
        running = [h for h in run.handles if _poll(h) is None]
        if running:
            log.event(f"stopping {len(running)} process(es): {reason or 'the job is done'}")
            run.stop_all()
        run.finish_output()
        run.kill_leftovers()
        ended = True
    finally:
        if not ended:  # stopped from outside (a cancel's signal, a bug): stop the job in
            try:       # order (TERM, grace, KILL), and leave nothing of it behind
                run.stop_all()
            finally:
                run.close()
                run.kill_leftovers()
        else:
            run.close()
    results = [
        ProcessResult(h.spec.role, h.spec.index, h.spec.host, _poll(h),
                      str(log_dir / h.spec.log_name))
        for h in run.handles
    ]
    return Outcome(status, reason, results, time.monotonic() - started, run.restarts)


class _Run:
    """The live state of one supervised job: handles, their readers, activity, restarts."""

    def __init__(self, target, specs, run_id, log, log_dir, cancel, grace_seconds):
        self.target = target
        self.specs = specs
        self.run_id = run_id
        self.log = log
        self.cancel = cancel
        self.grace_seconds = grace_seconds
        self.lines: queue.Queue[tuple[int, str | None]] = queue.Queue()
        log_dir.mkdir(parents=True, exist_ok=True)
        self.files = [(log_dir / spec.log_name).open("a", buffering=1) for spec in specs]
        self.quiet = [quiets_tensorflow(spec) for spec in specs]
        self.quieted = 0  # lines kept out of the merged log
        self.handles: list[Handle] = []
        self.readers: list[threading.Thread] = []
        self.last_line = time.monotonic()
        self.last_line_of = [time.monotonic()] * len(specs)
        self.restarts: list[dict] = []
        # Start of the current attempt, and whether it has shown progress yet.
        self.attempt_started = time.monotonic()
        self.progressed = False
        self.silence_seconds: float | None = None
        self.stall_hint: str | None = None
        self.said_silent: set[int] = set()  # tasks named silent since their last line
        self.ended_at: dict[int, float] = {}  # when each task's process was seen ended
        self.hinted = False

    # -- starting and stopping ------------------------------------------------------------------

    def start(self, i: int) -> Handle:
        handle = self.target.start(self.specs[i])
        self.last_line_of[i] = self.last_line = time.monotonic()
        self.ended_at.pop(i, None)
        self.said_silent.discard(i)
        reader = threading.Thread(target=self._read, args=(i, handle), daemon=True,
                                  name=f"read-{handle.spec.tag}")
        reader.start()
        self.readers.append(reader)
        return handle

    def start_all(self) -> None:
        self.attempt_started = time.monotonic()
        self.progressed = False
        self.handles = []
        if not getattr(self.target, "concurrent_start", False) or len(self.specs) < 2:
            for i in range(len(self.specs)):
                self.handles.append(self.start(i))
            return
        # Together (an SSH target's 18 processes one after another took 0.4 s here); every
        # one started is kept, so that a failure still stops the others.
        with ThreadPoolExecutor(max_workers=min(32, len(self.specs))) as pool:
            futures = [pool.submit(self.start, i) for i in range(len(self.specs))]
        failed = [f.exception() for f in futures if f.exception() is not None]
        self.handles = [f.result() for f in futures if f.exception() is None]
        if failed:
            raise failed[0]

    def _read(self, i: int, handle: Handle) -> None:
        try:
            for line in handle.lines():
                self.lines.put((i, line))
        finally:
            self.lines.put((i, None))

    def stop_all(self) -> None:
        def send(sig: int) -> None:
            for handle in self.handles:  # KILL the group even if its leader already exited
                if sig == signal.SIGKILL or _poll(handle) is None:
                    handle.signal_group(sig)

        reachable = [h for h in self.handles if not _lost(h)]

        def alive() -> bool:
            """Any process that got the TERM: a group's leader, or, once it has exited,
            another member of its group (a child still saving a checkpoint has the grace
            period too). Helpers that left the group never got the TERM: kill_leftovers."""
            return any(_poll(h) is None or _group_alive(h) for h in reachable)

        terminate_then_kill(send, alive, grace=self.grace_seconds, wait=self.drain)

    def kill_leftovers(self) -> None:
        """Kill what is left of the run (helpers that left the group), then check it is gone:
        a killed process lingers until the kernel has torn it down."""
        try:
            leftovers = self.target.leftovers(self.run_id)
            if not leftovers:
                return
            self.log.event(f"killing {len(leftovers)} leftover process(es) of the run: "
                           f"{_shown(leftovers)}")
            self.target.kill(leftovers)
            leftovers = still_running(lambda: self.target.leftovers(self.run_id),
                                      seconds=LEFTOVER_SECONDS)
            if leftovers:
                self.log.event(f"still running {LEFTOVER_SECONDS:g} s after SIGKILL: "
                               f"{_shown(leftovers)}")
        except TfsubmitError as exc:
            self.log.event(f"could not check for leftover processes: {exc}")

    def finish_output(self) -> None:
        for reader in self.readers:
            reader.join(timeout=2.0)  # a helper that escaped the group may hold the pipe
        self.drain()

    def close(self) -> None:
        for handle in self.handles:  # never leave a group behind, even when tfsubmit fails
            if _poll(handle) is None:
                handle.signal_group(signal.SIGKILL)
        for file in self.files:
            file.close()

    # -- watching -------------------------------------------------------------------------------

    def drain(self, wait: float = 0.0) -> None:
        """Write queued lines to the process logs and the merged log."""
        deadline = time.monotonic() + wait
        while True:
            timeout = max(0.0, deadline - time.monotonic())
            try:
                i, line = self.lines.get(timeout=timeout) if timeout else self.lines.get_nowait()
            except queue.Empty:
                return
            if line is None:
                continue
            self.last_line_of[i] = self.last_line = time.monotonic()
            self.said_silent.discard(i)
            if not self.progressed and is_progress(line):
                self.progressed = True
            self.files[i].write(line + "\n")
            tag, text = _tagged(self.specs[i], line)
            if self.quiet[i] and _QUIET_NOISE.match(text):
                if not self.quieted:
                    self.log.event("TensorFlow's start-up lines are kept in each process's "
                                   "log (logs/), not here; environment_variables "
                                   "{TF_CPP_MIN_LOG_LEVEL: '0'} shows them")
                self.quieted += 1
                continue
            self.log.line(tag, text)
            deadline = time.monotonic()  # got something: empty the rest without waiting

    def watch(self, started, max_seconds, decides, policy, hang_seconds, startup_seconds,
              activity):
        deciding = [decides(spec) for spec in self.specs]
        while True:
            self.drain(0.1)
            if self.cancel.is_set():
                if all(_poll(handle) == 0 for handle, d in
                       zip(self.handles, deciding, strict=True) if d):
                    # The outcome follows what the processes did: they had all finished
                    # (exit 0) before the cancel could stop them.
                    self.log.event("a cancel came as the job finished: every process that "
                                   "decides its outcome had already exited 0: Completed")
                    return "Completed", None
                return "Canceled", "canceled by the user"
            now = time.monotonic()
            if max_seconds is not None and now - started > max_seconds:
                return "Failed", f"exceeded max_run_duration_seconds={max_seconds:g}"
            if hang_seconds is not None or startup_seconds is not None:
                metric = _monotonic(activity())
                if not self.progressed and metric > self.attempt_started:
                    self.progressed = True
                reason = None
                if not self.progressed:
                    if startup_seconds is not None \
                            and now - self.attempt_started > startup_seconds:
                        reason = (f"no progress (a metric, or a line of the job's own) within "
                                  f"startup_timeout_seconds={startup_seconds:g}")
                elif hang_seconds is not None \
                        and now - max(self.last_line, metric) > hang_seconds:
                    reason = self._hang_reason(hang_seconds)
                if reason is not None:
                    if not self._recover(None, None, reason, policy):
                        return "Failed", reason
                    continue
            try:
                codes = [handle.poll() for handle in self.handles]
            except TfsubmitError as exc:  # a host stopped answering
                return "Failed", str(exc)
            if self.silence_seconds is not None:
                self._say_silences(codes, deciding, now, activity)
            for i, code in enumerate(codes):
                if code not in (None, 0) or (code == 0 and not deciding[i]
                                             and any(deciding)):
                    reason = _reason(self.specs[i], self.handles[i], code)
                    if not self._recover(i, code, reason, policy):
                        return "Failed", reason
                    break
            else:
                if all(code == 0 for code, d in zip(codes, deciding, strict=True) if d):
                    return "Completed", None

    def _say_silences(self, codes: list[int | None], deciding: list[bool], now: float,
                      activity) -> None:
        """Name a task whose exit decides the job (a ps serves, silent by design) silent for
        silence_seconds while another ended (before or after its last line: on a loaded
        machine a task may print its last line after a fast one ended) or went on; say the
        stall hint when nothing ended and no metric came for that long."""
        for i, code in enumerate(codes):
            if code is not None:
                self.ended_at.setdefault(i, now)
        limit = self.silence_seconds
        for i, code in enumerate(codes):
            quiet_since = self.last_line_of[i]
            if code is not None or not deciding[i] or i in self.said_silent \
                    or now - quiet_since < limit:
                continue
            went_on = [self.specs[j].tag.strip("[]") + (" ended" if j in self.ended_at
                                                        else " went on")
                       for j in range(len(codes)) if j != i
                       and (j in self.ended_at
                            or self.last_line_of[j] > quiet_since + limit / 2)]
            if went_on:
                self.said_silent.add(i)
                self.log.event(
                    f"{self.specs[i].tag.strip('[]')} has printed nothing for "
                    f"{now - quiet_since:.0f} s while {', '.join(went_on[:4])}"
                    f"{' and others' if len(went_on) > 4 else ''}: it may be waiting for "
                    "something that never comes (a file another node wrote in a folder it "
                    "does not share, a task that ended)")
        if self.stall_hint and not self.hinted and not self.ended_at \
                and now - self.attempt_started > limit \
                and _monotonic(activity()) < self.attempt_started:
            self.hinted = True
            self.log.event(f"{now - self.attempt_started:.0f} s: {self.stall_hint}")

    def _hang_reason(self, hang_seconds: float) -> str:
        now = time.monotonic()
        quiet = ", ".join(f"{spec.tag.strip('[]')} {now - last:.0f} s"
                          for spec, last in zip(self.specs, self.last_line_of, strict=True))
        return (f"hung: no log line and no metric for {hang_seconds:g} s "
                f"(hang_timeout_seconds); silent tasks: {quiet}")

    def _recover(self, i: int | None, code: int | None, reason: str,
                 policy: RestartPolicy) -> bool:
        """Restart per policy; False when the policy says the job fails."""
        action = policy.decide(self.specs[i] if i is not None else None, code,
                               len(self.restarts))
        if action == "fail":
            if self.restarts:
                reason_suffix = f" after {len(self.restarts)} restart(s)"
                self.log.event(f"giving up{reason_suffix}: {reason}")
            return False
        attempt = len(self.restarts) + 1
        task = self.specs[i].tag.strip("[]") if i is not None else "all tasks"
        self.restarts.append({"task": task, "exit_code": code, "action": action,
                              "attempt": attempt, "reason": reason, "time": time.time()})
        scope = "it alone" if action == "task" else "the whole gang"
        self.log.event(f"restart {attempt} of {policy.max_restarts}: {reason}; "
                       f"restarting {scope}")
        if action == "task":
            self.handles[i].signal_group(signal.SIGKILL)
            self.handles[i] = self.start(i)
        else:
            self.stop_all()
            self.kill_leftovers()
            self.start_all()
        return True


_MPI_TAG = re.compile(r"^\[\d+,(\d+)\]<std(?:out|err)>:(.*?)(?:\[\d+,\d+\]<std(?:out|err)>:)?$")


def _group_alive(handle: Handle) -> bool:
    """Whether a handle's process group still has members, where its target can tell
    (the local target); else what its leader's exit says."""
    check = getattr(handle, "group_alive", None)
    return bool(check and check())


def _tagged(spec: ProcessSpec, line: str) -> tuple[str, str]:
    """The tag and text of a line; mpirun's `--tag-output` lines get their rank's tag."""
    if spec.rank_hosts:
        match = _MPI_TAG.match(line)
        if match and int(match[1]) < len(spec.rank_hosts):
            rank = int(match[1])
            text = match[2]
            return (f"[rank:{rank}@{spec.rank_hosts[rank]}]",
                    StderrLine(text) if line[line.index("]") + 1:].startswith("<stderr>")
                    else text)
    return spec.tag, line


def _reason(spec: ProcessSpec, handle: Handle, code: int) -> str:
    """How a task's end reads in the run's reason: the root cause first (its scheduler
    ended or requeued the job: canceled outside tfsubmit, a node lost, a time limit), then
    the first task it broke; else the task and how it failed."""
    tag = spec.tag.strip("[]")
    if handle.ended_by:
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        return f"{handle.ended_by}; the first task it broke: {tag} ({how})"
    if code == 0:
        return f"{tag} failed with exit code 0 before the job was done"
    return f"{tag} failed with signal {-code}" if code < 0 else \
        f"{tag} failed with exit code {code}"


def _shown(processes: list[tuple[str, int | str]]) -> str:
    return ", ".join(f"{pid}@{host}" for host, pid in processes)


def _monotonic(wall_time: float) -> float:
    """A wall-clock timestamp on the monotonic clock (0 stays very old)."""
    if not wall_time:
        return 0.0
    return time.monotonic() - (time.time() - wall_time)


def _lost(handle: Handle) -> bool:
    try:
        handle.poll()
    except TfsubmitError:
        return True
    return False


def _poll(handle: Handle) -> int | None:
    """The exit code, or None while running or unknowable (its host is lost)."""
    try:
        return handle.poll()
    except TfsubmitError:
        return None
