"""Writes a checkpoint, then fails on its first attempt; a restarted attempt finds the
checkpoint in checkpoints_dir (kept across restarts) and completes."""
import sys

from tfsubmit import Run

run = Run.get_context()
checkpoint = run.checkpoints_dir / "step.txt"
if checkpoint.exists():
    print(f"resumed from checkpoint step {checkpoint.read_text()}", flush=True)
    run.log("resumed_step", int(checkpoint.read_text()))
    sys.exit(0)
checkpoint.write_text("7")
print("wrote checkpoint step 7; failing", flush=True)
sys.exit(5)
