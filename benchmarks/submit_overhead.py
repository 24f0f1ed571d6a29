"""How much does tfsubmit add to a training run? One command, one ratio.

    .venv/bin/python benchmarks/submit_overhead.py [--epochs 12] [--repeats 3]

Times the example (about 20 s of training here) two ways, alternating, both warm:
  bare:      `ENV/bin/python train.py ...` in a copy of the example, same environment
  tfsubmit:  Experiment.submit(job) + run.wait_for_completion(), with the embedded server up
and prints the median of each and their ratio (goal: at most 1.05); then the same for a
short job (one small epoch, about 3 s bare), whose ratio is reported (the fixed cost shows
there). Absolute times on a shared machine mean little; the ratios are measured within one
run.
"""

from __future__ import annotations

import argparse

from compare import ROOT, bare_context, compare, warm_workspace

from tfsubmit import TensorFlow

EXAMPLE = ROOT / "examples" / "keras-synthetic"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    job = TensorFlow(source_directory=str(EXAMPLE), entry_script="train.py",
                     script_params={"--epochs": args.epochs, "--samples": args.samples})
    with warm_workspace(job, {"--epochs": 1}) as (workspace, bare_dir):
        python, env = bare_context(workspace, job)
        compare(workspace, job, [python, "train.py", *job.script_arguments()], bare_dir, env,
                repeats=args.repeats, bare_label="bare python train.py", goal=1.05)
        short = job.model_copy(update={"script_params": {"--epochs": 1, "--samples": 2000}})
        print("short job:", flush=True)
        compare(workspace, short, [python, "train.py", *short.script_arguments()], bare_dir,
                env, repeats=args.repeats, bare_label="bare python train.py", goal=None)


if __name__ == "__main__":
    main()
