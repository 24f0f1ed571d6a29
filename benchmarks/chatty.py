"""A chatty job: how soon after its last line is its run Completed, here and in Prefect?

    .venv/bin/python benchmarks/chatty.py [--lines 200000] [--values 50000] [--repeats 2]

On a warm workspace, a job that prints `--lines` lines and logs `--values` values of one
metric as fast as it can, then prints the time of its last line. Measured: from that
line to `wait_for_completion()` returning, and to the end time of its flow run in Prefect,
and how many of its lines reached Prefect's log (the rest are left out on purpose, and
said so there). The baseline, in the same run: the same job as a bare `python job.py`.
Goal (issue 25): Completed in both within 2 s of the job's last line.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path

from compare import bare_context, warm_workspace

from tfsubmit import Experiment, TensorFlow
from tfsubmit.service.prefect_api import PrefectAPI
from tfsubmit.service.server import server_status

JOB = """import sys, time
from tfsubmit import run_context
ctx = run_context()
lines, values = int(sys.argv[1]), int(sys.argv[2])
for i in range(lines):
    print(f"line {i} of a chatty job", flush=False)
for i in range(values):
    ctx.log("loss", 1.0 / (i + 1))
print(f"LAST {time.time():.6f}", flush=True)
"""


def _last_line_time(text: str) -> float:
    return float(next(line.split("LAST ")[1] for line in text.splitlines() if "LAST " in line))


def _count_logs(api: PrefectAPI, flow_run_id: str) -> tuple[int, int]:
    """(job lines, warnings) in the flow run's Prefect log."""
    lines = warnings = 0
    offset = 0
    while True:
        page = api.logs(flow_run_id, offset=offset, limit=200)
        lines += sum("a chatty job" in entry["message"] for entry in page)
        warnings += sum(entry["level"] == 30 and "left out" in entry["message"]
                        for entry in page)
        if len(page) < 200:
            return lines, warnings
        offset += 200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--values", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    argv = [str(args.lines), str(args.values)]
    with tempfile.TemporaryDirectory(prefix="tfsubmit-chatty-") as tmp:
        source = Path(tmp) / "job"
        source.mkdir()
        (source / "job.py").write_text(JOB)
        job = TensorFlow(source_directory=str(source), entry_script="job.py", script_params=argv)
        with warm_workspace(job, ["10", "10"]) as (workspace, bare_dir):
            python, env = bare_context(workspace, job)
            api = PrefectAPI(server_status(workspace).api_url)
            bare, waited, prefect = [], [], []
            for i in range(args.repeats):
                began = time.time()
                out = subprocess.run([python, "job.py", *argv], cwd=bare_dir, env=env,
                                     capture_output=True, text=True, check=True).stdout
                bare.append(time.time() - _last_line_time(out))
                run = Experiment("chatty", workspace=workspace.root).submit(job)
                details = run.wait_for_completion(timeout=900)
                done = time.time()
                last = _last_line_time(run.paths.output_log.read_text())
                waited.append(done - last)
                while (flow_run := api.flow_run(details["flow_run_id"]))["end_time"] is None:
                    time.sleep(0.2)
                ended = datetime.fromisoformat(flow_run["end_time"].replace("Z", "+00:00"))
                prefect.append(ended.timestamp() - last)
                shipped, said = _count_logs(api, details["flow_run_id"])
                print(f"  round {i + 1}: bare exits {bare[-1]:.2f} s after its last line "
                      f"(ran {done - began:.0f} s in all); tfsubmit: Completed in "
                      f"wait_for_completion {waited[-1]:.2f} s and in Prefect "
                      f"{prefect[-1]:.2f} s after the job's last line; {shipped} of "
                      f"{args.lines} lines in Prefect's log, {said} warning(s) saying so",
                      flush=True)
            api.close()
    print(f"bare: exits {statistics.median(bare):.2f} s after its last line (median)")
    print(f"tfsubmit: Completed {statistics.median(waited):.2f} s (wait_for_completion) and "
          f"{statistics.median(prefect):.2f} s (Prefect) after the job's last line (median; "
          "goal <= 2 s)")


if __name__ == "__main__":
    main()
