"""How does tfsubmit hold many submissions at once? One command, the issue's figures.

    .venv/bin/python benchmarks/load.py [--runs 100] [--seconds 1]

Three rounds, each on a fresh workspace with no server running yet, each submitting
`--runs` copies of a job that sleeps `--seconds`, all at once:
  threads/sqlite:     threads calling Experiment.submit (the embedded server on SQLite)
  processes/sqlite:   separate `tfsubmit submit --detach` processes
  threads/postgresql: threads, the server on a PostgreSQL the benchmark starts (Debian's)
For each it prints submitted, completed, failed, missing from / duplicated in `tfsubmit
runs`, servers started, the wall time until the last run ended, and the median and p95 of
one submit call. The baseline of the wall time is the job itself: `--seconds`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from tfsubmit import Experiment, TensorFlow  # noqa: E402
from tfsubmit.api import Run  # noqa: E402
from tfsubmit.service.server import ensure_server, stop_server  # noqa: E402
from tfsubmit.store.layout import Workspace  # noqa: E402

JOBS = ROOT / "tests" / "jobs"
TFSUBMIT = [sys.executable, "-m", "tfsubmit.cli"]


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def _round(label: str, runs: int, seconds: float, *, processes: bool,
           database: str | None) -> None:
    root = Path(tempfile.mkdtemp(prefix="tfsubmit-load-"))
    workspace = Workspace(root / "ws")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    job = TensorFlow(source_directory=str(JOBS), entry_script="sleeper.py",
                     script_params=[str(seconds)])
    try:
        if database:
            ensure_server(workspace, database=database)
        began = time.monotonic()
        submit_times: list[float] = []
        if processes:
            job_file = root / "job.yaml"
            job_file.write_text(f"source_directory: {JOBS}\nentry_script: sleeper.py\n"
                                f"script_params: ['{seconds}']\nexperiment: load\n")
            procs = [(time.monotonic(), subprocess.Popen(
                [*TFSUBMIT, "--workspace", str(workspace.root), "submit", str(job_file),
                 "--detach"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                env=env)) for _ in range(runs)]
            ids = []
            for started, proc in procs:
                out, err = proc.communicate()
                submit_times.append(time.monotonic() - started)
                if proc.returncode == 0:
                    ids.append(out.split("Submitted run ")[1].split()[0])
                else:
                    print(f"  submit failed: {err.strip()[-200:]}")
        else:
            experiment = Experiment("load", workspace=workspace.root)

            def submit(_):
                started = time.monotonic()
                run = experiment.submit(job)
                submit_times.append(time.monotonic() - started)
                return run.id

            with ThreadPoolExecutor(runs) as pool:
                ids = list(pool.map(submit, range(runs)))
        statuses = Counter()
        for run_id in ids:
            details = Run(run_id, workspace=workspace.root).wait_for_completion(
                timeout=3600, raise_on_error=False)
            statuses[details["status"]] += 1
        wall = time.monotonic() - began
        listed = subprocess.run([*TFSUBMIT, "--workspace", str(workspace.root), "runs",
                                 "--experiment", "load", "--limit", "100000"],
                                capture_output=True, text=True, env=env).stdout
        names = Counter(line.split()[0] for line in listed.splitlines()[1:] if line.strip())
        servers = workspace.server_log.read_text().count("Check out the dashboard at")
        print(f"{label:20} submitted {len(ids):4}  completed {statuses['Completed']:4}  "
              f"failed {runs - statuses['Completed']:3}  "
              f"missing {len(set(ids) - set(names)):3}  "
              f"duplicated {sum(1 for n in names.values() if n > 1):3}  servers {servers}  "
              f"wall {wall:6.1f} s ({wall / seconds:.0f}x the job)  submit p50 "
              f"{statistics.median(submit_times):.2f} s p95 "
              f"{_percentile(submit_times, 0.95):.2f} s", flush=True)
    finally:
        stop_server(workspace)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--skip-postgresql", action="store_true")
    args = parser.parse_args()
    _round("threads/sqlite", args.runs, args.seconds, processes=False, database=None)
    _round("processes/sqlite", args.runs, args.seconds, processes=True, database=None)
    if not args.skip_postgresql:
        from postgres import Postgres

        database = Postgres().start()
        try:
            _round("threads/postgresql", args.runs, args.seconds, processes=False,
                   database=database.url)
        finally:
            database.stop()


if __name__ == "__main__":
    main()
