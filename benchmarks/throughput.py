"""How many runs at once? 100 concurrent 1-s jobs: wall, submit p50/p95, memory per run.

    .venv/bin/python benchmarks/throughput.py [--runs 100] [--seconds 1] [--postgres]

On a workspace whose server is already up (and the job's environment built), submits
`--runs` copies of a job that sleeps `--seconds` from as many threads at once, waits for
all, and prints: the wall time from the first submit to the last run's end, submit() p50
and p95, and the memory of the runs' runner processes (proportional set size, the fork
server's shared pages counted once), sampled while they wait or run. The baseline,
measured in the same run: the same job as `--runs` bare `python job.py` processes at once.
Every run is a real flow run of the workspace's deployment, started by its worker (at most
its concurrency limit at once). `--postgres`: the server keeps its data in a throwaway
PostgreSQL (Debian's, as the tests start it) instead of its SQLite file. Goals (issue 25):
wall <= 120 s on SQLite, <= 60 s on PostgreSQL, for 100 runs; submit p95 < 1 s; none lost,
none twice.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from compare import ROOT, bare_context, warm_workspace

from tfsubmit import Experiment, TensorFlow
from tfsubmit.api import Run
from tfsubmit.service.prefect_api import PrefectAPI
from tfsubmit.service.server import server_status


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _sample_memory(runs_dir: Path, stop: threading.Event, samples: list[tuple[int, int]]):
    """(live runners, their total PSS in KiB), every half second."""
    while not stop.wait(0.5):
        pids = []
        for pidfile in runs_dir.glob("*/runner.pid"):
            try:
                pid = int(pidfile.read_text())
            except (OSError, ValueError):
                continue
            if Path(f"/proc/{pid}").exists():
                pids.append(pid)
        if pids:
            samples.append((len(pids), sum(_pss_kib(pid) for pid in pids)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--postgres", action="store_true",
                        help="the server on a throwaway PostgreSQL instead of SQLite")
    args = parser.parse_args()
    database = None
    if args.postgres:
        sys.path.insert(0, str(ROOT / "tests"))
        from postgres import Postgres

        database = Postgres().start()
    try:
        _measure(args, database.url if database else None)
    finally:
        if database is not None:
            database.stop()


def _measure(args: argparse.Namespace, database: str | None) -> None:
    with tempfile.TemporaryDirectory(prefix="tfsubmit-throughput-") as tmp:
        source = Path(tmp) / "job"
        source.mkdir()
        (source / "job.py").write_text(
            "import sys, time\nprint('started', flush=True)\n"
            "time.sleep(float(sys.argv[1]))\nprint('done', flush=True)\n")
        job = TensorFlow(source_directory=str(source), entry_script="job.py",
                         script_params=[str(args.seconds)])
        with warm_workspace(job, [str(args.seconds)], database=database) as (workspace,
                                                                              bare_dir):
            python, env = bare_context(workspace, job)
            began = time.monotonic()
            bare = [subprocess.Popen([python, "job.py", str(args.seconds)], cwd=bare_dir,
                                     env=env, stdout=subprocess.DEVNULL)
                    for _ in range(args.runs)]
            for process in bare:
                process.wait()
            bare_wall = time.monotonic() - began

            experiment = Experiment("throughput", workspace=workspace.root)
            submit_times: list[float] = []
            samples: list[tuple[int, int]] = []
            stop = threading.Event()
            sampler = threading.Thread(target=_sample_memory,
                                       args=(workspace.root / "runs", stop, samples))
            sampler.start()

            def submit(_):
                started = time.monotonic()
                run = experiment.submit(job)
                submit_times.append(time.monotonic() - started)
                return run.id

            began = time.monotonic()
            with ThreadPoolExecutor(args.runs) as pool:
                ids = list(pool.map(submit, range(args.runs)))
            statuses = [Run(run_id, workspace=workspace.root).wait_for_completion(
                timeout=3600, raise_on_error=False)["status"] for run_id in ids]
            wall = time.monotonic() - began
            named = [r["name"] for r in PrefectAPI(server_status(workspace).api_url)
                     .flow_runs(tags=["throughput"], limit=10 * args.runs)]
            stop.set()
            sampler.join()
    completed = statuses.count("Completed")
    twice = len(named) - len(set(named))
    lost = len(set(ids) - set(named))
    busiest = max(samples, default=(0, 0))
    per_run = [kib / count for count, kib in samples if count]
    print(f"bare: {args.runs} x `python job.py` at once: wall {bare_wall:.1f} s")
    store = "PostgreSQL" if database else "SQLite"
    print(f"tfsubmit ({store}): {args.runs} runs, {completed} completed, {lost} missing from "
          f"Prefect, {twice} there twice: wall {wall:.1f} s (goal <= "
          f"{60 if database else 120} s for 100), ratio to bare {wall / bare_wall:.1f}")
    print(f"submit() p50 {statistics.median(submit_times):.2f} s, "
          f"p95 {_percentile(submit_times, 0.95):.2f} s (goal p95 < 1 s)")
    if per_run:
        print(f"memory: {statistics.median(per_run) / 1024:.0f} MiB per live runner (median "
              f"of samples; PSS), {busiest[1] / 1024:.0f} MiB for {busiest[0]} at once")


if __name__ == "__main__":
    main()
