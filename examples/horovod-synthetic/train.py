"""Horovod data-parallel training of a Keras model on synthetic data (TensorFlow 2.15).

Run by tfsubmit with distributed_backend="mpi": every rank runs this script. Each rank
trains on its own shard; Horovod averages the gradients, so all ranks end with the same
weights (each prints a checksum). Rank 0 saves the model and logs metrics.
"""

import argparse
import os
import socket

import horovod.tensorflow.keras as hvd
import numpy as np
import tensorflow as tf

from tfsubmit import run_context

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--learning-rate", type=float, default=0.01)
parser.add_argument("--batch-size", type=int, default=32)
parser.add_argument("--samples", type=int, default=2048)
args = parser.parse_args()

hvd.init()
# Where this rank was started: the address sshd answered on, when started over SSH.
server = (os.environ.get("SSH_CONNECTION") or "local").split()[2:3] or ["local"]
print(f"rank {hvd.rank()} of size {hvd.size()} on {socket.gethostname()} via {server[0]}",
      flush=True)

rng = np.random.default_rng(hvd.rank())
features = rng.normal(size=(args.samples, 16)).astype("float32")
weights = np.random.default_rng(0).normal(size=(16,)).astype("float32")
labels = (features @ weights > 0).astype("float32")

tf.keras.utils.set_random_seed(0)
model = tf.keras.Sequential([
    tf.keras.Input(shape=(16,)),
    tf.keras.layers.Dense(32, activation="relu"),
    tf.keras.layers.Dense(1, activation="sigmoid"),
])
optimizer = hvd.DistributedOptimizer(tf.keras.optimizers.Adam(args.learning_rate * hvd.size()))
model.compile(optimizer=optimizer, loss="binary_crossentropy", metrics=["accuracy"])

ctx = run_context()
callbacks = [hvd.callbacks.BroadcastGlobalVariablesCallback(0),
             hvd.callbacks.MetricAverageCallback()]
if hvd.rank() == 0:
    callbacks.append(ctx.keras_callback())
model.fit(features, labels, epochs=args.epochs, batch_size=args.batch_size,
          callbacks=callbacks, verbose=2 if hvd.rank() == 0 else 0)

checksum = float(sum(float(np.sum(w)) for w in model.get_weights()))
print(f"rank {hvd.rank()} weights checksum {checksum:.6f}", flush=True)
if hvd.rank() == 0:
    model.save(ctx.outputs_dir / "model.keras")
