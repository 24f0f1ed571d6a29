"""What does tfsubmit add to a job on a Slurm cluster? One command, one ratio.

    .venv/bin/python benchmarks/slurm_overhead.py [--epochs 30] [--repeats 3]

Starts a real two-node Slurm cluster on this machine (tests/slurmcluster.py: munged,
slurmctld, a slurmd per node in its own network namespace; needs root), then times the
keras example (about 30 s of training here) two ways, alternating, both warm (environment
built, server up, page cache hot):
  bare:      `sbatch --parsable` of an equivalent batch script (`cd` to a copy of the example,
             the same environment's python, train.py), until Slurm shows the job COMPLETED
             (state read every 0.1 s)
  tfsubmit:  Experiment.submit(job) on the `slurm` target + run.wait_for_completion()
and prints the median of each and their ratio (goal: at most 1.1).
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

from compare import ROOT, bare_context, warm_workspace

sys.path.insert(0, str(ROOT / "tests"))
from slurmcluster import SlurmCluster  # noqa: E402

from tfsubmit import Experiment, TensorFlow  # noqa: E402
from tfsubmit.targets.config import SlurmTargetConfig, save_target  # noqa: E402

EXAMPLE = ROOT / "examples" / "keras-synthetic"


def bare_sbatch(cluster: SlurmCluster, script: Path) -> float:
    """Seconds from sbatch to the job shown COMPLETED."""
    env = {**os.environ, **cluster.env}
    started = time.perf_counter()
    job = subprocess.run(["sbatch", "--parsable", str(script)], env=env, check=True,
                         capture_output=True, text=True, timeout=60).stdout.strip()
    while True:
        state = subprocess.run(["scontrol", "-o", "show", "job", job], env=env,
                               capture_output=True, text=True, timeout=60).stdout
        if "JobState=COMPLETED" in state:
            return time.perf_counter() - started
        if any(f"JobState={s}" in state for s in ("FAILED", "CANCELLED", "TIMEOUT")):
            raise RuntimeError(f"the bare job failed: {state}")
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tfsubmit-slurm-bench-") as tmp:
        cluster = SlurmCluster(Path(tmp) / "cluster").start()
        try:
            shared = Path(tmp) / "shared"

            def add_target(workspace) -> None:
                save_target(workspace.root, "bench-slurm", SlurmTargetConfig(
                    workdir=str(shared), env=cluster.env))

            job = TensorFlow(source_directory=str(EXAMPLE), entry_script="train.py",
                             compute_target="bench-slurm",
                             script_params={"--epochs": args.epochs, "--samples": args.samples})
            with warm_workspace(job, {"--epochs": 1}, setup=add_target) as (workspace, bare_dir):
                python, env = bare_context(workspace, job)
                python = str(shared / "envs" / Path(python).parent.parent.name / "bin" / "python")
                script = Path(tmp) / "bare.sh"
                script.write_text("\n".join([
                    "#!/bin/bash", "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1",
                    f"#SBATCH --output={tmp}/bare-%j.out", f"cd {bare_dir}",
                    f"export PYTHONPATH={env['PYTHONPATH']} TF_CPP_MIN_LOG_LEVEL=2",
                    f"exec {python} train.py {' '.join(job.script_arguments())}", ""]))
                experiment = Experiment("bench", workspace=workspace.root)
                bare, managed = [], []
                for i in range(args.repeats):
                    bare.append(bare_sbatch(cluster, script))
                    started = time.perf_counter()
                    experiment.submit(job).wait_for_completion()
                    managed.append(time.perf_counter() - started)
                    print(f"  round {i + 1}: bare sbatch {bare[-1]:.2f} s, "
                          f"tfsubmit {managed[-1]:.2f} s", flush=True)
        finally:
            cluster.stop()
    b, m = statistics.median(bare), statistics.median(managed)
    print(f"{'bare sbatch':22} median {b:.2f} s, best {min(bare):.2f} s")
    print(f"{'tfsubmit submit+wait':22} median {m:.2f} s, best {min(managed):.2f} s")
    print(f"ratio of best runs tfsubmit/bare: {min(managed) / min(bare):.3f}")
    print(f"ratio tfsubmit/bare: {m / b:.3f}  (medians; goal <= 1.1)")


if __name__ == "__main__":
    main()
