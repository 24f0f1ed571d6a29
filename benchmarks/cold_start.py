"""How long until a submission's job prints its first line, cold and warm? One command.

    .venv/bin/python benchmarks/cold_start.py [--repeats 3]

Each repeat on a fresh workspace (no Prefect server, no worker; the job's environment
already built in the shared cache): `tfsubmit submit job.yaml` of a job whose first act is
to print a line, timed from the command's start until its first line of any kind (what it
says it waits for), until it says the server is ready, and until the job's line; then the
same submission again on the now warm workspace. The baseline, measured in the same run:
`ENV/bin/python job.py` until the same line. Goals (issue 25): warm, the job's first line
<= 3 s after submit; cold, a line at once and the job's first line <= server ready + 3 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from compare import ROOT, bare_context

from tfsubmit import TensorFlow
from tfsubmit.service.server import stop_server
from tfsubmit.store.layout import Workspace

LINE = "first line of the job"


def _until(argv: list[str], env: dict[str, str], cwd: Path
           ) -> tuple[float, float | None, float, str]:
    """Seconds to the first output line, to "Prefect server ready" (None when it was up),
    to LINE, and what the first line said."""
    began = time.perf_counter()
    process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    first = ready = None
    said = ""
    try:
        for line in process.stdout:
            now = time.perf_counter() - began
            if first is None:
                first, said = now, line.strip()
            if "Prefect server ready" in line:
                ready = now
            if LINE in line:
                return first, ready, now, said
        raise RuntimeError(f"the job never printed {LINE!r} (exit {process.wait()})")
    finally:
        process.kill()
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tfsubmit-cold-") as tmp:
        source = Path(tmp) / "job"
        source.mkdir()
        (source / "job.py").write_text(f"print({LINE!r}, flush=True)\n")
        (Path(tmp) / "job.yaml").write_text(
            f"source_directory: {source}\nentry_script: job.py\nexperiment: cold\n")
        job = TensorFlow(source_directory=str(source), entry_script="job.py")
        bare, waiting, after_ready, warm = [], [], [], []
        for i in range(args.repeats):
            workspace = Workspace(Path(tmp) / f"ws{i}")
            env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
            env["TFSUBMIT_WORKSPACE"] = str(workspace.root)
            env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
            submit = [sys.executable, "-m", "tfsubmit.cli", "submit", str(Path(tmp) / "job.yaml")]
            try:
                first, ready, line, said = _until(submit, env, ROOT)
                _, _, warm_line, _ = _until(submit, env, ROOT)
            finally:
                stop_server(workspace)
            python, bare_env = bare_context(workspace, job)
            _, _, bare_line, _ = _until([python, "job.py"], bare_env, source)
            bare.append(bare_line)
            waiting.append(first)
            after_ready.append(line - (ready or 0.0))
            warm.append(warm_line)
            print(f"  round {i + 1}: bare {bare_line:.2f} s; cold: first word after "
                  f"{first:.2f} s ({said[:60]!r}), server ready after {ready or 0:.2f} s, "
                  f"the job's line after {line:.2f} s; warm: the job's line after "
                  f"{warm_line:.2f} s", flush=True)
    print(f"bare python job.py to its first line: median {statistics.median(bare):.2f} s")
    print(f"cold (fresh workspace): says what it waits for after "
          f"{statistics.median(waiting):.2f} s; the job's first line "
          f"{statistics.median(after_ready):.2f} s after the server is ready (median; goal "
          "<= 3 s)")
    print(f"warm: the job's first line {statistics.median(warm):.2f} s after submit (median; "
          f"goal <= 3 s), {statistics.median(warm) - statistics.median(bare):.2f} s over bare")


if __name__ == "__main__":
    main()
