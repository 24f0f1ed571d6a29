"""A parameter-server job that waits, for the silence notices (issue 26). --mode stall:
every task serves and none leads, as a TF2 ClusterCoordinator script run without a chief;
--mode missing: worker 0 ends, worker 1 waits for a file nobody writes."""
import argparse
import json
import os
import time

parser = argparse.ArgumentParser()
parser.add_argument("--mode", choices=["stall", "missing"], default="stall")
args = parser.parse_args()
task = json.loads(os.environ["TF_CONFIG"])["task"]
print(f"{task['type']} {task['index']} up", flush=True)
if args.mode == "missing" and task["type"] == "worker":
    if task["index"] == 0:
        raise SystemExit(0)
    while not os.path.exists("never-written.txt"):
        time.sleep(0.2)
while True:
    time.sleep(1)
