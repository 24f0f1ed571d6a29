"""Writes an output and a metric, then exits 3: the run must be Failed with both kept."""
import sys
from pathlib import Path

from tfsubmit import run_context

ctx = run_context()
ctx.log("loss", 1.5)
Path("outputs/partial.txt").write_text("written before the failure\n")
print("about to fail with exit code 3", flush=True)
print("this goes to stderr", file=sys.stderr, flush=True)
sys.exit(3)
