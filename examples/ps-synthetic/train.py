"""Parameter-server training on synthetic data (TensorFlow 2.21, custom training loop).

Every task runs this script; TF_CONFIG (set by tfsubmit) says which one it is:
ps and worker tasks serve, the chief coordinates (ClusterCoordinator schedules steps on
the workers; variables live on the parameter servers). Keras 3 `model.fit` does not work
under ParameterServerStrategy, so the loop is written out. Logs loss and steps per worker.
The chief checkpoints to outputs/checkpoints after every epoch and resumes from the
newest checkpoint, so a restarted gang goes on where it stopped.
"""

import argparse
import json
import os

import numpy as np
import tensorflow as tf

from tfsubmit import run_context

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--steps-per-epoch", type=int, default=20)
parser.add_argument("--learning-rate", type=float, default=0.05)
parser.add_argument("--batch-size", type=int, default=64)
args = parser.parse_args()

config = json.loads(os.environ["TF_CONFIG"])
task = config["task"]
cluster_resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()

if task["type"] in ("worker", "ps"):
    print(f"{task['type']} {task['index']} serving on {config['cluster'][task['type']][task['index']]}",
          flush=True)
    server = tf.distribute.Server(cluster_resolver.cluster_spec(), job_name=task["type"],
                                  task_index=task["index"], protocol="grpc", start=True)
    server.join()

strategy = tf.distribute.ParameterServerStrategy(cluster_resolver)
coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)

rng = np.random.default_rng(0)
true_w = rng.normal(size=(16, 1)).astype("float32")


def dataset_fn():
    x = np.random.default_rng(1).normal(size=(4096, 16)).astype("float32")
    y = (x @ true_w > 0).astype("float32")
    return tf.data.Dataset.from_tensor_slices((x, y)).shuffle(4096).repeat().batch(args.batch_size)


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
manager = tf.train.CheckpointManager(checkpoint, str(ctx.outputs_dir / "checkpoints"),
                                     max_to_keep=2)
if manager.latest_checkpoint:
    checkpoint.restore(manager.latest_checkpoint)
    print(f"resumed from epoch {int(done_epochs.numpy())} ({manager.latest_checkpoint})",
          flush=True)

for v in model.trainable_variables:
    print(f"variable {v.path} on {v.value.device}", flush=True)


@tf.function
def train_step(iterator):
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.nn.compute_average_loss(loss_fn(y, model(x, training=True)))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    x, y = next(iterator)
    loss = strategy.run(step, args=(x, y))
    worker = tf.distribute.coordinator.experimental_get_current_worker_index()
    return strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None), worker


per_worker_dataset = coordinator.create_per_worker_dataset(dataset_fn)
per_worker_iterator = iter(per_worker_dataset)
steps_by_worker = {}
for epoch in range(int(done_epochs.numpy()) + 1, args.epochs + 1):
    results = [coordinator.schedule(train_step, args=(per_worker_iterator,))
               for _ in range(args.steps_per_epoch)]
    coordinator.join()
    fetched = [r.fetch() for r in results]
    losses = [float(loss) for loss, _ in fetched]
    for _, worker in fetched:
        steps_by_worker[int(worker)] = steps_by_worker.get(int(worker), 0) + 1
    done_epochs.assign(epoch)
    manager.save(checkpoint_number=epoch)
    ctx.log("epoch", epoch, step=epoch)
    ctx.log("loss", sum(losses) / len(losses), step=epoch)
    print(f"epoch {epoch}: loss {sum(losses) / len(losses):.4f}; steps by worker "
          f"{dict(sorted(steps_by_worker.items()))}", flush=True)

for worker, steps in sorted(steps_by_worker.items()):
    ctx.log(f"steps_worker_{worker}", steps)

model.save_weights(ctx.outputs_dir / "model.weights.h5")
print("chief done", flush=True)
