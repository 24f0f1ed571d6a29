"""The body of a Slurm target's batch job: starts the run's tasks inside the allocation.

    python -m tfsubmit.runtime.slurm_gang STATE_DIR

Runs on the allocation's first node (the batch step), standard library only. tfsubmit on
the submit host talks to it through files in STATE_DIR, a folder of the run on the shared
file system:

    start/<n>.json      a task to start (written by the submit host; n counts up)
    begun/<n>           ... started, in Slurm attempt <content> (written here)
    out/<n>.out, .err   ... its output (stdout; stderr), as it runs
    exit/<n>            ... its exit code, once it has ended
    stop/<n>            a signal (a number) to send to task n
    release             the run is over: end the job (after a sweep of the nodes)
    attempt-<a>.json    the nodes of Slurm attempt a (its SLURM_RESTART_COUNT)

A task runs on its node through `srun --overlap` (one step per task, named after it), or,
for `mpirun`, right here: Open MPI launches its daemons through Slurm. Node names and
addresses in a task's argv and environment were those of the allocation that tfsubmit
planned on; after a requeue onto other nodes, they are mapped to the new ones by position.
A requeued job runs this again: requests begun in an earlier attempt are not restarted
(the submit host decides, counting the restart).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

POLL = 0.1
# With no task running and nothing asked for this long, the submit host is gone: end the job.
IDLE_LIMIT = float(os.environ.get("TFSUBMIT_SLURM_IDLE_LIMIT", "900"))
RUN_MARKER = "TFSUBMIT_RUN_ID"


def say(text: str) -> None:
    sys.stdout.write(f"[slurm {time.strftime('%H:%M:%S')}] {text}\n")
    sys.stdout.flush()


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def allocation() -> tuple[list[str], list[str]]:
    """The allocation's node names, and each one's address (NodeAddr)."""
    names = subprocess.run(["scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]],
                           capture_output=True, text=True, timeout=60, check=True).stdout.split()
    shown = subprocess.run(["scontrol", "-o", "show", "node", ",".join(names)],
                           capture_output=True, text=True, timeout=60).stdout
    addresses = dict(re.findall(r"NodeName=(\S+) .*?NodeAddr=(\S+)", shown))
    return names, [addresses.get(name, name) for name in names]


def remapper(planned: list[str], current: list[str]):
    """A function replacing each planned name or address with the current one."""
    pairs = {old: new for old, new in zip(planned, current, strict=False) if old != new}
    if not pairs:
        return lambda text: text
    pattern = re.compile(r"(?<![\w.-])(" + "|".join(map(re.escape, pairs)) + r")(?![\w-]|\.\w)")
    return lambda text: pattern.sub(lambda m: pairs[m[1]], text)


class Gang:
    def __init__(self, state: Path) -> None:
        self.state = state
        for name in ("start", "begun", "out", "exit", "stop"):
            (state / name).mkdir(parents=True, exist_ok=True)
        self.attempt = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        self.job_id = os.environ.get("SLURM_JOB_ID", "")
        self.names, self.addresses = allocation()
        write_atomic(state / f"attempt-{self.attempt}.json", json.dumps({
            "job_id": self.job_id, "nodes": self.names, "addresses": self.addresses,
            "batch_host": os.uname().nodename, "started": time.time()}))
        self.running: dict[str, subprocess.Popen] = {}
        self.run_id = ""
        self.stopping = False
        self.idle_since = time.monotonic()

    def loop(self) -> int:
        say(f"attempt {self.attempt}: nodes {', '.join(self.names)}")
        while True:
            if not self.stopping:
                self.start_requested()
            self.deliver_stops()
            self.reap()
            if self.running:
                self.idle_since = time.monotonic()
            elif (self.state / "release").exists() or self.stopping:
                self.sweep()
                return 0
            elif time.monotonic() - self.idle_since > IDLE_LIMIT:
                say(f"nothing to do for {IDLE_LIMIT:g} s and no release: ending the job")
                return 0
            time.sleep(POLL)

    def start_requested(self) -> None:
        for request in sorted((self.state / "start").glob("*.json"), key=_number):
            n = request.stem
            if (self.state / "begun" / n).exists():
                continue
            task = json.loads(request.read_text())
            self.start(n, task)

    def start(self, n: str, task: dict) -> None:
        remap = remapper(task["planned_names"] + task["planned_addresses"],
                         self.names + self.addresses)
        argv = [remap(arg) for arg in task["argv"]]
        env = {**os.environ, **{k: remap(v) for k, v in task["env"].items()}}
        self.run_id = env.get(RUN_MARKER, self.run_id)
        slot = task["node"]
        node = self.names[slot % len(self.names)]
        if not task.get("here"):
            argv = ["srun", "--overlap", "--nodes=1", "--ntasks=1", f"--nodelist={node}",
                    f"--job-name={task['name']}", "--unbuffered", "--kill-on-bad-exit=1",
                    "--export=ALL", f"--chdir={task['cwd']}", *argv]
        out = (self.state / "out" / f"{n}.out").open("ab")
        err = (self.state / "out" / f"{n}.err").open("ab")
        try:
            process = subprocess.Popen(argv, cwd=task["cwd"], env=env, stdout=out,
                                       stderr=err, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        except OSError as exc:
            err.write(f"cannot start {argv[0]}: {exc}\n".encode())
            out.close()
            err.close()
            write_atomic(self.state / "begun" / n, str(self.attempt))
            write_atomic(self.state / "exit" / n, "127")
            return
        out.close()
        err.close()
        self.running[n] = process
        write_atomic(self.state / "begun" / n, str(self.attempt))
        say(f"task {n} ({task['name']}) started on {node}")

    def deliver_stops(self) -> None:
        for request in (self.state / "stop").iterdir():
            n = request.name
            try:
                sig = int(request.read_text() or signal.SIGTERM)
            except ValueError:
                continue
            request.unlink(missing_ok=True)
            process = self.running.get(n)
            if process is not None:
                self.signal(n, process, sig)

    def signal(self, n: str, process: subprocess.Popen, sig: int) -> None:
        try:
            if sig == signal.SIGKILL:  # srun passes on what it can catch; KILL the step itself
                self.kill_step(n)
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass

    def kill_step(self, n: str) -> None:
        task = json.loads((self.state / "start" / f"{n}.json").read_text())
        steps = subprocess.run(["squeue", "-h", "-s", "-j", self.job_id, "-o", "%i %j"],
                               capture_output=True, text=True, timeout=60).stdout.splitlines()
        for line in steps:
            step, _, name = line.partition(" ")
            if name == task["name"]:
                subprocess.run(["scancel", "--signal=KILL", step], capture_output=True,
                               timeout=60)

    def reap(self) -> None:
        for n, process in list(self.running.items()):
            code = process.poll()
            if code is None:
                continue
            del self.running[n]
            code = 128 - code if code < 0 else code  # killed by a signal: as a shell says it
            write_atomic(self.state / "exit" / n, str(code))
            say(f"task {n} ended with exit code {code}")

    def terminate(self, signum, frame) -> None:
        """scancel (or the time limit): stop the tasks, then end."""
        say(f"signal {signum}: stopping {len(self.running)} task(s)")
        self.stopping = True
        for n, process in self.running.items():
            self.signal(n, process, signal.SIGTERM)

    def sweep(self) -> None:
        """Every node of the allocation: kill what is left of the run (a task that escaped
        its step), and say what was found."""
        if not self.run_id:
            return
        argv = ["srun", "--overlap", f"--nodes={len(self.names)}", "--ntasks-per-node=1",
                "--job-name=tfsubmit-sweep", sys.executable, "-m", __spec__.name,
                "--sweep", self.run_id]
        try:
            found = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            say("sweep of the nodes timed out after 60 s")
            return
        for line in (found.stdout + found.stderr).splitlines():
            say(line)


def sweep_here(run_id: str) -> int:
    """Kill this node's processes of the run (by TFSUBMIT_RUN_ID in their environment)."""
    me = {os.getpid(), os.getppid()}
    killed = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in me:
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"{RUN_MARKER}={run_id}".encode() in environ:
            try:
                os.kill(int(entry), signal.SIGKILL)
                killed.append(entry)
            except ProcessLookupError:
                pass
    node = os.uname().nodename
    print(f"{node}: killed leftover process(es) {', '.join(killed)}" if killed
          else f"{node}: no process of the run left")
    return 0


def _number(path: Path) -> int:
    return int(path.stem) if path.stem.isdigit() else 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["--sweep"]:
        return sweep_here(argv[1])
    gang = Gang(Path(argv[0]))
    signal.signal(signal.SIGTERM, gang.terminate)
    signal.signal(signal.SIGINT, gang.terminate)
    return gang.loop()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
