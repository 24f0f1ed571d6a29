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

from compare import ROOT, bare_context, compare, warm_workspace

from tfsubmit import TensorFlow

EXAMPLE = ROOT / "examples" / "horovod-synthetic"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    job = TensorFlow(source_directory=str(EXAMPLE), entry_script="train.py",
                     script_params={"--epochs": args.epochs}, distributed_backend="mpi",
                     process_count_per_node=2)
    with warm_workspace(job, {"--epochs": 1}) as (workspace, bare_dir):
        python, env = bare_context(workspace, job)
        argv = ["mpirun", "--allow-run-as-root", "-np", "2", "-H", "localhost:2",
                "--bind-to", "none", python, "train.py", *job.script_arguments()]
        compare(workspace, job, argv, bare_dir, env, repeats=args.repeats,
                bare_label="bare mpirun", goal=1.1)


if __name__ == "__main__":
    main()
