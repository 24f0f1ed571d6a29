"""MultiWorkerMirroredStrategy training on synthetic data (TensorFlow 2.21, custom loop).

Every worker runs this script with its TF_CONFIG (set by tfsubmit); worker 0 is the chief
and saves the model. Keras 3 `model.fit` fails under this strategy on 2.21, so the loop is
written out (a Keras 3 model in a custom loop works). Logs loss per epoch on every worker.
Every worker checkpoints after each epoch to outputs/checkpoints/worker-<index> (workers
may share a folder) and resumes from it, so a restarted gang goes on where it stopped.
"""

import argparse
import json
import os

import numpy as np
import tensorflow as tf

from tfsubmit import run_context

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--steps-per-epoch", type=int, default=10)
parser.add_argument("--learning-rate", type=float, default=0.05)
parser.add_argument("--batch-size", type=int, default=64)
args = parser.parse_args()

task = json.loads(os.environ["TF_CONFIG"])["task"]
strategy = tf.distribute.MultiWorkerMirroredStrategy()
print(f"worker {task['index']} of {strategy.num_replicas_in_sync} replicas", flush=True)

rng = np.random.default_rng(0)
true_w = rng.normal(size=(16, 1)).astype("float32")
x = rng.normal(size=(4096, 16)).astype("float32")
y = (x @ true_w > 0).astype("float32")
global_batch = args.batch_size * strategy.num_replicas_in_sync
dataset = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(global_batch)
iterator = iter(strategy.experimental_distribute_dataset(dataset))

with strategy.scope():
    model = tf.keras.Sequential([
        tf.keras.Input(shape=(16,)),
        tf.keras.layers.Dense(16, activation="relu"),
        tf.keras.layers.Dense(1),
    ])
    optimizer = tf.keras.optimizers.SGD(args.learning_rate)
    loss_fn = tf.keras.losses.BinaryCrossentropy(from_logits=True,
                                                 reduction=tf.keras.losses.Reduction.NONE)
    done_epochs = tf.Variable(0, dtype=tf.int64, trainable=False)

ctx = run_context()
checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=done_epochs)
manager = tf.train.CheckpointManager(
    checkpoint, str(ctx.outputs_dir / "checkpoints" / f"worker-{task['index']}"), max_to_keep=2)
if manager.latest_checkpoint:
    checkpoint.restore(manager.latest_checkpoint)
    print(f"resumed from epoch {int(done_epochs.numpy())}", flush=True)


@tf.function
def train_step(iterator):
    def step(x, y):
        with tf.GradientTape() as tape:
            per_example = loss_fn(y, model(x, training=True))
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    losses = strategy.run(step, args=next(iterator))
    return strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)


for epoch in range(int(done_epochs.numpy()) + 1, args.epochs + 1):
    loss = float(np.mean([train_step(iterator) for _ in range(args.steps_per_epoch)]))
    done_epochs.assign(epoch)
    manager.save(checkpoint_number=epoch)
    ctx.log("epoch", epoch, step=epoch)
    ctx.log("loss", loss, step=epoch)
    print(f"epoch {epoch}: loss {loss:.4f}", flush=True)

checksum = float(sum(float(tf.reduce_sum(v)) for v in model.trainable_variables))
print(f"weights checksum {checksum:.6f}", flush=True)
if task["index"] == 0:
    model.save_weights(ctx.outputs_dir / "model.weights.h5")
