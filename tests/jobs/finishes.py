"""Writes an output, says it is ready, works a while (argv[1] seconds), then ends well."""
import sys
import time

with open("outputs/result.txt", "w") as handle:
    handle.write("done\n")
print("ready: working", flush=True)
time.sleep(float(sys.argv[1]))
print("finished", flush=True)
