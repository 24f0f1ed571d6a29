"""Logs `tick` (its step) every 0.3 s until 40 ticks: a run still training (issue 28)."""
import time

from tfsubmit import run_context

ctx = run_context()
for step in range(1, 41):
    ctx.log("tick", step * 0.5, step=step)
    time.sleep(0.3)
print("ticked", flush=True)
