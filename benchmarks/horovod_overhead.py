"""How much does tfsubmit add to Horovod training? One command, one ratio.

    .venv/bin/python benchmarks/horovod_overhead.py [--epochs 40] [--repeats 3]

The same 2-rank Horovod training (examples/horovod-synthetic, TensorFlow 2.15) two ways,
alternating, both warm:
  bare:      mpirun --allow-run-as-root -np 2 -H localhost:2 --bind-to none ENV/bin/python
             train.py ...  in a copy of the example, same environment
  tfsubmit:  Experiment.submit(job) + wait_for_completion(), distributed_backend="mpi"
             (which also runs the mpi4py pre-flight before training)
and prints the medians and their ratio (goal: at most 1.1).
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

EXAMPLE = ROOT / "examples" / "horovod-synthetic"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.pop("PREFECT_API_URL", None)
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    with tempfile.TemporaryDirectory(prefix="tfsubmit-hvd-bench-") as tmp:
        workspace = Workspace(Path(tmp) / "ws")
        job = TensorFlow(source_directory=str(EXAMPLE), entry_script="train.py",
                         script_params={"--epochs": args.epochs}, distributed_backend="mpi",
                         process_count_per_node=2)
        experiment = Experiment("bench", workspace=workspace.root)
        try:
            ensure_server(workspace)
            print("warming up: environment (Horovod), server, page cache ...", flush=True)
            experiment.submit(job.model_copy(update={"script_params": {"--epochs": 1}})
                              ).wait_for_completion()
            python = str(workspace.env_cache / environment_spec(job).hash / "bin" / "python")
            bare_dir = Path(tmp) / "bare"
            shutil.copytree(EXAMPLE, bare_dir)
            (bare_dir / "outputs").mkdir()
            argv = ["mpirun", "--allow-run-as-root", "-np", "2", "-H", "localhost:2",
                    "--bind-to", "none", python, "train.py", *job.script_arguments()]
            env = {**os.environ, "PYTHONPATH": str(runtime_dir(workspace.runtime))}
            bare, managed = [], []
            for i in range(args.repeats):
                started = time.perf_counter()
                subprocess.run(argv, cwd=bare_dir, env=env, check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                bare.append(time.perf_counter() - started)
                started = time.perf_counter()
                experiment.submit(job).wait_for_completion()
                managed.append(time.perf_counter() - started)
                print(f"  round {i + 1}: bare mpirun {bare[-1]:.2f} s, tfsubmit "
                      f"{managed[-1]:.2f} s", flush=True)
        finally:
            stop_server(workspace)
    b, m = statistics.median(bare), statistics.median(managed)
    print(f"bare mpirun        median {b:.2f} s, best {min(bare):.2f} s")
    print(f"tfsubmit (mpi)     median {m:.2f} s, best {min(managed):.2f} s")
    print(f"ratio tfsubmit/bare: {m / b:.3f}  (medians; goal <= 1.1)")


if __name__ == "__main__":
    main()
