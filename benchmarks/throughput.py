"""How many runs at once? 100 concurrent 1-s jobs: wall, submit p50/p95, memory per run.

    .venv/bin/python benchmarks/throughput.py [--runs 100] [--seconds 1]

On a workspace whose server is already up (and the job's environment built), submits
`--runs` copies of a job that sleeps `--seconds` from as many threads at once, waits for
all, and prints: the wall time from the first submit to the last run's end, submit() p50
and p95, and the memory of the runs' runner processes (proportional set size, the fork
server's shared pages counted once), sampled while they wait or run. The baseline,
measured in the same run: the same job as `--runs` bare `python job.py` processes at once.
Goals (issue 16): wall <= 60 s for 100 runs, submit p95 < 1 s.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from compare import bare_context, warm_workspace

from tfsubmit import Experiment, TensorFlow
from tfsubmit.api import Run


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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tfsubmit-throughput-") as tmp:
        source = Path(tmp) / "job"
        source.mkdir()
        (source / "job.py").write_text(
            "import sys, time\nprint('started', flush=True)\n"
            "time.sleep(float(sys.argv[1]))\nprint('done', flush=True)\n")
        job = TensorFlow(source_directory=str(source), entry_script="job.py",
                         script_params=[str(args.seconds)])
        with warm_workspace(job, [str(args.seconds)]) as (workspace, bare_dir):
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
            stop.set()
            sampler.join()
    completed = statuses.count("Completed")
    busiest = max(samples, default=(0, 0))
    per_run = [kib / count for count, kib in samples if count]
    print(f"bare: {args.runs} x `python job.py` at once: wall {bare_wall:.1f} s")
    print(f"tfsubmit: {args.runs} runs, {completed} completed: wall {wall:.1f} s "
          f"(goal <= 60 s for 100), ratio to bare {wall / bare_wall:.1f}")
    print(f"submit() p50 {statistics.median(submit_times):.2f} s, "
          f"p95 {_percentile(submit_times, 0.95):.2f} s (goal p95 < 1 s)")
    if per_run:
        print(f"memory: {statistics.median(per_run) / 1024:.0f} MiB per live runner (median "
              f"of samples; PSS), {busiest[1] / 1024:.0f} MiB for {busiest[0]} at once")


if __name__ == "__main__":
    main()
