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
                repeats=args.repeats, bare_label="bare python train.py", goal=1.15)


if __name__ == "__main__":
    main()
