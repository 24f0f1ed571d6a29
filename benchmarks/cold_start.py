"""How long until a first submission's job prints its first line? One command.

    .venv/bin/python benchmarks/cold_start.py [--repeats 3]

Each repeat on a fresh workspace (no Prefect server, no fork server; the job's environment
already built in the shared cache): `tfsubmit submit job.yaml` of a job whose first act is
to print a line, timed from the command's start until that line appears in its output, and
until its first line of any kind (what it says it is waiting for). The baseline, measured
in the same run: `ENV/bin/python job.py` until the same line. Goal (issue 16): the job's
first line within 3 s of submit on an idle machine.
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


def _until(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, str]:
    """Seconds to the first output line, to LINE, and what the first line said."""
    began = time.perf_counter()
    process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    first = None
    said = ""
    try:
        for line in process.stdout:
            if first is None:
                first, said = time.perf_counter() - began, line.strip()
            if LINE in line:
                return first, time.perf_counter() - began, said
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
        bare, managed, waiting = [], [], []
        for i in range(args.repeats):
            workspace = Workspace(Path(tmp) / f"ws{i}")
            env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
            env["TFSUBMIT_WORKSPACE"] = str(workspace.root)
            env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
            try:
                first, line, said = _until(
                    [sys.executable, "-m", "tfsubmit.cli", "submit", str(Path(tmp) / "job.yaml")],
                    env, ROOT)
            finally:
                stop_server(workspace)
            python, bare_env = bare_context(workspace, job)
            _, bare_line, _ = _until([python, "job.py"], bare_env, source)
            bare.append(bare_line)
            managed.append(line)
            waiting.append(first)
            print(f"  round {i + 1}: bare {bare_line:.2f} s; tfsubmit: first word after "
                  f"{first:.2f} s ({said[:70]!r}), the job's line after {line:.2f} s",
                  flush=True)
    print(f"bare python job.py to its first line: median {statistics.median(bare):.2f} s")
    print(f"tfsubmit submit on a fresh workspace: says what it waits for after "
          f"{statistics.median(waiting):.2f} s, the job's first line after "
          f"{statistics.median(managed):.2f} s (median; goal <= 3 s)")
    print(f"difference: {statistics.median(managed) - statistics.median(bare):.2f} s")


if __name__ == "__main__":
    main()
