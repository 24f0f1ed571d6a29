"""Trains in steps, a checkpoint after each; a restarted attempt goes on from the newest
checkpoint in checkpoints_dir (kept across restarts and Slurm requeues)."""
import sys
import time

from tfsubmit import Run

run = Run.get_context()
checkpoint = run.checkpoints_dir / "step.txt"
step = int(checkpoint.read_text()) if checkpoint.exists() else 0
if step:
    print(f"resumed from checkpoint step {step}", flush=True)
    run.log("resumed_step", step)
total = int(sys.argv[1]) if len(sys.argv) > 1 else 40
pause = float(sys.argv[2]) if len(sys.argv) > 2 else 0.5
while step < total:
    time.sleep(pause)
    step += 1
    checkpoint.write_text(str(step))
    run.log("step", step)
    print(f"step {step} checkpointed", flush=True)
print("done", flush=True)
