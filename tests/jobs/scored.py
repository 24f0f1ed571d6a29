"""Logs `--loss` as its loss, then exits with `--exit-code` (a trial that can fail on cue)."""
import argparse
import sys

from tfsubmit import run_context

parser = argparse.ArgumentParser()
parser.add_argument("--loss", type=float, default=1.0)
parser.add_argument("--exit-code", type=int, default=0)
args = parser.parse_args()
run_context().log("loss", args.loss)
print(f"loss {args.loss}; exiting with {args.exit_code}", flush=True)
sys.exit(args.exit_code)
