"""The host agent: what runs on an SSH host, as `python -m tfsubmit.targets.agent COMMAND ...`.

tfsubmit uploads its own package (standard library only on this path) to each host once
per code version and calls these over SSH, so a host needs nothing but Python 3.

    preflight WORKDIR MIN_FREE_MB   stdin: object hashes, one a line (may be none)
                                    -> JSON: python, version, free_mb, runtime, and
                                    `missing`: the hashes WORKDIR/objects lacks;
                                    `removed`: abandoned runtime uploads it removed
    build-env CACHE                 stdin: EnvironmentSpec JSON -> install lines, then
                                    `TFSUBMIT-ENV {json}` as the last line
    stage                           stdin: JSON {objects, dest, manifest, cache, env}:
                                    make DEST's folders, write the manifest's files there
                                    from OBJECTS, then build-env
    ps RUN_ID [KEEPERS]             -> JSON list of live pids of the run (KEEPERS: the
                                    folder where `run` registers its keepers)
    kill RUN_ID                     -> SIGKILL them; JSON list of pids killed
    run                             stdin: one JSON line {argv, env, cwd, pidfile, path,
                                    keepers}:
                                    start it in a new session (its pid, the group id, goes
                                    to pidfile), relay its output, exit with its code
                                    (128 + N when killed by signal N); as a subreaper,
                                    stop what it left behind when it exits
    signal PIDFILE SIGNUM           -> signal the whole process group named in PIDFILE

The resident agent that runs these by forking (agentd.py) starts through the SSH target's
guard as `serve`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

# Without a resident agent (agentd.py) a new agent process starts for every command on
# every host (each process of a job is started by `run`), so each command imports only what
# it uses.

AGENT = "tfsubmit.targets.agent"
ENV_RESULT_PREFIX = "TFSUBMIT-ENV "


def preflight(workdir: str, min_free_mb: str) -> dict:
    report = {"python": sys.executable, "version": "{}.{}.{}".format(*sys.version_info[:3]),
              # The folder holding this copy of the tfsubmit package (<runtime>/tfsubmit/targets/
              # agent.py): the SSH target checks it is the version it uploaded.
              "runtime": str(Path(__file__).resolve().parents[2])}
    report["ran"] = True  # (the SSH target's guard has checked the workdir and the runtime)
    root = Path(workdir)
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        probe = root / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
        report["writable"] = True
    except OSError as exc:
        report["writable"] = False
        report["error"] = f"workdir {workdir} is not writable: {exc.strerror or exc}"
        return report
    free_mb = shutil.disk_usage(root).free // (1 << 20)
    report["free_mb"] = free_mb
    if free_mb < int(min_free_mb):
        report["error"] = f"only {free_mb} MB free in {workdir} (need {min_free_mb} MB)"
    report["missing"] = missing(str(root / "objects"))
    report["removed"] = remove_abandoned(root / "runtime")
    return report


ABANDONED_SECONDS = 3600.0


def remove_abandoned(runtimes: Path) -> list[str]:
    """Runtime uploads that never finished (`<hash>.part-*`: the connection died midway) and
    runtimes set aside but not removed (`<hash>.old-*`), untouched for an hour: an upload
    by another host sharing this workdir takes seconds, so these are nobody's."""
    import time

    removed = []
    try:
        entries = list(os.scandir(runtimes))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        if ".part-" not in entry.name and ".old-" not in entry.name:
            continue
        try:
            if now - entry.stat(follow_symlinks=False).st_mtime < ABANDONED_SECONDS:
                continue
        except OSError:
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(entry.name)
    return removed


def missing(objects: str) -> list[str]:
    from tfsubmit.store.objects import ObjectStore

    wanted = [line.strip() for line in sys.stdin if line.strip()]
    return ObjectStore(Path(objects)).missing(wanted)


def build_env(cache: str, data: dict | None = None) -> None:
    from tfsubmit.spec.environment import EnvironmentSpec
    from tfsubmit.targets.envbuild import resolve_environment

    data = json.load(sys.stdin) if data is None else data
    spec = EnvironmentSpec(
        python_version=data["python_version"],
        requirements=tuple(data["requirements"]),
        conda_packages=tuple(data.get("conda_packages", ())),
        local_content=tuple(data.get("local_content", ())),
    )
    env = resolve_environment(spec, Path(cache).expanduser(),
                              on_line=lambda line: print(line, flush=True))
    result = {"hash": env.hash, "path": env.path, "python": env.python, "reused": env.reused,
              "freeze": env.freeze, "build_seconds": env.build_seconds}
    print(ENV_RESULT_PREFIX + json.dumps(result), flush=True)


def stage() -> None:
    """Everything a host needs before its processes start, in one call."""
    from tfsubmit.store.layout import NODE_FOLDERS
    from tfsubmit.store.objects import ObjectStore
    from tfsubmit.store.snapshots import Snapshot, materialize

    request = json.load(sys.stdin)
    for sub in NODE_FOLDERS:
        Path(request["dest"], sub).mkdir(parents=True, exist_ok=True)
    materialize(Snapshot.from_manifest(request["manifest"]), ObjectStore(Path(request["objects"])),
                Path(request["dest"]))
    build_env(request["cache"], request["env"])


def kill(run_id: str) -> list[int]:
    from tfsubmit.system.processes import kill_pids, processes_of_run

    pids = processes_of_run(run_id)
    kill_pids(pids)
    return pids


def run_process() -> int:
    """Start the task, relay its exit code; as its subreaper, adopt what it leaves behind
    (double-forked, setsid helpers) and stop that too once the task has exited."""
    from tfsubmit.system.processes import become_subreaper

    become_subreaper()
    request = json.loads(sys.stdin.readline())
    registered = _register_keeper(request.get("keepers"))
    env = {**os.environ, **request["env"]}
    env.pop("TFSUBMIT_KEEPER_OF", None)  # the agent's own mark (system.processes), not the task's
    if request.get("path"):
        env["PATH"] = request["path"] + os.pathsep + env.get("PATH", "/usr/bin:/bin")
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()  # own session and group: a signal to the group reaches all of it
            Path(request["pidfile"]).write_text(str(os.getpid()))
            os.chdir(request["cwd"])
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.execvpe(request["argv"][0], request["argv"], env)
        except BaseException as exc:  # noqa: BLE001 (report, then leave the fork at once)
            print(f"tfsubmit: cannot start {request['argv'][0]}: {exc}", flush=True)
        os._exit(127)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    _stop_adopted()
    if registered:
        registered.unlink(missing_ok=True)
        try:
            registered.parent.rmdir()  # the run's last keeper
        except OSError:
            pass
    return 128 - code if code < 0 else code


def _identity(pid: int) -> str | None:
    """What tells this process from a later one with its pid: boot id and start time."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        started = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None
    return f"{boot} {started}"


def _register_keeper(keepers: str | None) -> Path | None:
    """A keeper forked by the resident agent (agentd.py) has the agent's environment, not
    its run's marker: it leaves a note where `ps` looks (KEEPERS/PID: its identity)."""
    identity = _identity(os.getpid())
    if not keepers or identity is None:
        return None
    note = Path(keepers, str(os.getpid()))
    draft = Path(keepers, f".{os.getpid()}")
    for _ in range(5):  # a `ps` may remove the folder it finds empty, just made
        try:
            Path(keepers).mkdir(parents=True, exist_ok=True)
            draft.write_text(identity)
            draft.rename(note)  # whole or not there: `ps` removes a note it finds wrong
            return note
        except FileNotFoundError:
            continue
        except OSError:
            return None
    return None


def registered_keepers(keepers: str) -> list[int]:
    """The live keepers that left a note in KEEPERS. A note whose keeper is gone (killed
    before it could remove it, or its pid reused since) is removed, and the folder with
    the run's last one."""
    found = []
    try:
        notes = [note for note in Path(keepers).iterdir() if note.name.isdigit()]
    except OSError:
        return []
    for note in notes:
        try:
            if note.read_text() == _identity(int(note.name)):
                found.append(int(note.name))
            else:
                note.unlink()
        except OSError:
            continue
    if not found:
        try:
            Path(keepers).rmdir()
        except OSError:
            pass  # a keeper registering meanwhile, or a draft of one
    return found


def _stop_adopted() -> None:
    """SIGKILL every descendant left (orphans this subreaper adopted), and collect them."""
    from tfsubmit.system.processes import descendants, kill_pids, reap_adopted

    try:
        os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return  # no child at all, so nothing below: no need to read every process's stat
    left = descendants(os.getpid())
    if left:
        kill_pids(left)
        reap_adopted(left)
    while True:  # and any that exited on their own meanwhile
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


def signal_group(pidfile: str, signum: str) -> None:
    try:
        os.killpg(int(Path(pidfile).read_text()), int(signum))
    except (FileNotFoundError, ProcessLookupError, ValueError):
        pass


def main(argv: list[str]) -> int:
    command, args = argv[0], argv[1:]
    if command == "preflight":
        print(json.dumps(preflight(*args)))
    elif command == "build-env":
        build_env(*args)
    elif command == "stage":
        from tfsubmit.store.snapshots import CorruptObjectError

        try:
            stage()
        except CorruptObjectError as exc:
            print(f"tfsubmit: {exc}", flush=True)
            return 1
    elif command == "ps":
        from tfsubmit.system.processes import processes_of_run

        keepers = registered_keepers(args[1]) if len(args) > 1 else []
        print(json.dumps(processes_of_run(args[0], keepers=keepers)))
    elif command == "kill":
        print(json.dumps(kill(*args)))
    elif command == "run":
        return run_process()
    elif command == "signal":
        signal_group(*args)
    else:
        print(f"unknown command {command!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
