"""How much does tfsubmit add to a training run? One command, one ratio.

    .venv/bin/python benchmarks/submit_overhead.py [--epochs 12] [--repeats 3]

Times the example (about 20 s of training here) two ways, alternating, both warm:
  bare:      `ENV/bin/python train.py ...` in a copy of the example, same environment
  tfsubmit:  Experiment.submit(job) + run.wait_for_completion(), with the embedded server up
and prints the median of each and their ratio (goal: at most 1.15). Absolute times on a
shared machine mean little; the ratio is measured within one run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tfsubmit import Experiment, TensorFlow  # noqa: E402
from tfsubmit.environment import environment_spec, runtime_dir  # noqa: E402
from tfsubmit.server import ensure_server, stop_server  # noqa: E402
from tfsubmit.workspace import Workspace  # noqa: E402

EXAMPLE = ROOT / "examples" / "keras-synthetic"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    os.environ.pop("PREFECT_API_URL", None)
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    with tempfile.TemporaryDirectory(prefix="tfsubmit-bench-") as tmp:
        workspace = Workspace(Path(tmp) / "ws")
        os.environ["TFSUBMIT_WORKSPACE"] = str(workspace.root)
        params = {"--epochs": args.epochs, "--samples": args.samples}
        job = TensorFlow(source_directory=str(EXAMPLE), entry_script="train.py",
                         script_params=params)
        experiment = Experiment("bench", workspace=workspace.root)
        try:
            ensure_server(workspace)
            print("warming up: environment, server, page cache ...", flush=True)
            experiment.submit(job.model_copy(update={"script_params": {"--epochs": 1}})
                              ).wait_for_completion()
            python = str(workspace.env_cache / environment_spec(job).hash / "bin" / "python")
            bare_dir = Path(tmp) / "bare"
            shutil.copytree(EXAMPLE, bare_dir)
            bare_env = {**os.environ, "PYTHONPATH": str(runtime_dir(workspace.runtime))}
            bare_argv = [python, "train.py", *job.script_arguments()]

            bare, managed = [], []
            for i in range(args.repeats):
                started = time.perf_counter()
                subprocess.run(bare_argv, cwd=bare_dir, env=bare_env, check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                bare.append(time.perf_counter() - started)

                started = time.perf_counter()
                experiment.submit(job).wait_for_completion()
                managed.append(time.perf_counter() - started)
                print(f"  round {i + 1}: bare {bare[-1]:.2f} s, tfsubmit {managed[-1]:.2f} s",
                      flush=True)
        finally:
            stop_server(workspace)

    b, m = statistics.median(bare), statistics.median(managed)
    print(f"bare python train.py   median {b:.2f} s, best {min(bare):.2f} s")
    print(f"tfsubmit submit+wait   median {m:.2f} s, best {min(managed):.2f} s")
    print(f"ratio of best runs tfsubmit/bare: {min(managed) / min(bare):.3f}")
    print(f"ratio tfsubmit/bare: {m / b:.3f}  (medians; goal <= 1.15)")


if __name__ == "__main__":
    main()
