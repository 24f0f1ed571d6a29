"""Helpers that run on a compute host, inside `python -m tfsubmit.remote COMMAND ...`.

tfsubmit uploads its own package (standard library only on this path) to each host once
per code version and calls these over SSH, so a host needs nothing but Python 3.

    preflight WORKDIR MIN_FREE_MB   stdin: object hashes, one a line (may be none)
                                    -> JSON: python, version, free_mb, runtime, and
                                    `missing`: the hashes WORKDIR/objects lacks
    build-env CACHE                 stdin: EnvironmentSpec JSON -> install lines, then
                                    `TFSUBMIT-ENV {json}` as the last line
    stage                           stdin: JSON {objects, dest, manifest, cache, env}:
                                    make DEST's folders, write the manifest's files there
                                    from OBJECTS, then build-env
    ps RUN_ID                       -> JSON list of live pids of the run
    kill RUN_ID                     -> SIGKILL them; JSON list of pids killed
    run                             stdin: one JSON line {argv, env, cwd, pidfile, path}:
                                    start it in a new session (its pid, the group id, goes
                                    to pidfile), relay its output, exit with its code
                                    (128 + N when killed by signal N)
    signal PIDFILE SIGNUM           -> signal the whole process group named in PIDFILE
    rank SCRIPT ARGS...             (an MPI rank) move into this rank's folder, pick its
                                    GPU, then run SCRIPT in this process
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path

ENV_RESULT_PREFIX = "TFSUBMIT-ENV "


def preflight(workdir: str, min_free_mb: str) -> dict:
    report = {"python": sys.executable, "version": "{}.{}.{}".format(*sys.version_info[:3]),
              "runtime": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    root = Path(workdir)
    try:
        root.mkdir(parents=True, exist_ok=True)
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
    return report


def missing(objects: str) -> list[str]:
    root = Path(objects)
    wanted = [line.strip() for line in sys.stdin if line.strip()]
    return [d for d in wanted if not (root / d[:2] / d[2:]).exists()]


def materialize(objects: str, dest: str, manifest: dict) -> int:
    root, target = Path(objects), Path(dest)
    for rel, entry in manifest["files"].items():
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / entry["sha256"][:2] / entry["sha256"][2:], path)
        if entry.get("executable"):
            path.chmod(0o755)
    return len(manifest["files"])


def build_env(cache: str, data: dict | None = None) -> None:
    from tfsubmit.environment import EnvironmentSpec, resolve_environment

    data = json.load(sys.stdin) if data is None else data
    spec = EnvironmentSpec(
        python_version=data["python_version"],
        requirements=tuple(data["requirements"]),
        conda_packages=tuple(data.get("conda_packages", ())),
    )
    env = resolve_environment(spec, Path(cache).expanduser(),
                              on_line=lambda line: print(line, flush=True))
    result = {"hash": env.hash, "path": env.path, "python": env.python, "reused": env.reused,
              "freeze": env.freeze, "build_seconds": env.build_seconds}
    print(ENV_RESULT_PREFIX + json.dumps(result), flush=True)


def stage() -> None:
    """Everything a host needs before its processes start, in one call."""
    request = json.load(sys.stdin)
    for sub in ("outputs", "logs", ".tfsubmit"):
        Path(request["dest"], sub).mkdir(parents=True, exist_ok=True)
    materialize(request["objects"], request["dest"], request["manifest"])
    build_env(request["cache"], request["env"])


def kill(run_id: str) -> list[int]:
    from tfsubmit.procfs import processes_of_run

    pids = processes_of_run(run_id)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


def run_process() -> int:
    request = json.loads(sys.stdin.readline())
    env = {**os.environ, **request["env"]}
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
    return 128 - code if code < 0 else code


def signal_group(pidfile: str, signum: str) -> None:
    try:
        os.killpg(int(Path(pidfile).read_text()), int(signum))
    except (FileNotFoundError, ProcessLookupError, ValueError):
        pass


def rank(script: str, args: list[str]) -> None:
    import runpy

    index = int(os.environ["OMPI_COMM_WORLD_RANK"])
    workdir = os.environ["TFSUBMIT_RANK_DIRS"].split(":")[index]
    os.chdir(workdir)
    os.environ.update({
        "TFSUBMIT_INDEX": str(index),
        "TFSUBMIT_METRICS_FILE": f"{workdir}/.tfsubmit/metrics-rank-{index}.jsonl",
        "TFSUBMIT_OUTPUTS": f"{workdir}/outputs",
    })
    for stream in (sys.stdout, sys.stderr):  # whole lines to mpirun, as they come
        # Not write-through (PYTHONUNBUFFERED may reach us from mpirun's environment): then
        # print() sends its text and its newline in two writes, and mpirun tags them apart.
        stream.reconfigure(line_buffering=True, write_through=False)
    gpus = os.environ.get("TFSUBMIT_RANK_GPUS")
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus.split(":")[index]
    sys.argv = [script, *args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")


def main(argv: list[str]) -> int:
    command, args = argv[0], argv[1:]
    if command == "preflight":
        print(json.dumps(preflight(*args)))
    elif command == "build-env":
        build_env(*args)
    elif command == "stage":
        stage()
    elif command == "ps":
        from tfsubmit.procfs import processes_of_run

        print(json.dumps(processes_of_run(*args)))
    elif command == "kill":
        print(json.dumps(kill(*args)))
    elif command == "run":
        return run_process()
    elif command == "signal":
        signal_group(*args)
    elif command == "rank":
        rank(args[0], args[1:])
    else:
        print(f"unknown command {command!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
