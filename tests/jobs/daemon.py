"""Leaves a daemon behind: double fork, setsid, exec with an empty environment (so no
TFSUBMIT_RUN_ID marks it), its pid in outputs/daemon.pid; then sleeps, or fails."""
import os
import sys
import time

if os.fork() == 0:
    os.setsid()
    grandchild = os.fork()
    if grandchild == 0:
        os.execve("/bin/sleep", ["sleep", "307"], {})
    with open("outputs/daemon.pid", "w") as handle:
        handle.write(str(grandchild))
    os._exit(0)
os.wait()
print("daemon started", flush=True)
if sys.argv[1:] == ["fail"]:
    sys.exit(1)
time.sleep(300)
