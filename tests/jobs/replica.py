"""An Azure ML v1 style parameter-server script: TF_CONFIG holds `ps` and `worker` only,
worker 0 is the chief. Parameter servers serve (a real TensorFlow server) until stopped;
each worker trains a little on its own; as the how-to's TF1 replica script did, worker 0
then writes a file under the working directory and the other workers wait for it before
exiting 0 (Azure's compute mounted one project folder on every node); the job is done when
every worker has."""
import json
import os
import time

import tensorflow as tf

from tfsubmit import Run

config = json.loads(os.environ["TF_CONFIG"])
task = config["task"]
print(f"cluster {sorted(config['cluster'])}; I am {task['type']} {task['index']}", flush=True)
if task["type"] == "ps":
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    server = tf.distribute.Server(resolver.cluster_spec(), job_name="ps",
                                  task_index=task["index"], protocol="grpc", start=True)
    server.join()

run = Run.get_context()
weight = tf.Variable(0.0)
steps = 5 * (task["index"] + 1)
for _ in range(steps):
    weight.assign_add(1.0)
run.log("steps", steps)
run.log("is_chief", float(task["index"] == 0))
if task["index"] == 0:
    with open("chief_done.txt", "w") as flag:  # the working directory, shared by the nodes
        flag.write("done\n")
else:
    while not os.path.exists("chief_done.txt"):  # as written: no timeout
        time.sleep(0.2)
    print(f"worker {task['index']} saw the chief's file", flush=True)
print(f"worker {task['index']} done after {int(weight.numpy())} steps", flush=True)
