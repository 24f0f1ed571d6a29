"""Starts a child in its process group and one that leaves it (setsid), then sleeps."""
import subprocess
import sys
import time

from tfsubmit import run_context

subprocess.Popen(["sleep", "300"])
subprocess.Popen(["sleep", "301"], start_new_session=True)
run_context().log("ready", 1)
print("ready: sleeping", flush=True)
time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 300)
print("woke up", flush=True)
