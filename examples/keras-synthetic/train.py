"""A small Keras classifier on synthetic data (no downloads).

Logs loss/accuracy/val_loss/val_accuracy each epoch through tfsubmit's run context and saves
the model to outputs/. Runs the same with `python train.py` outside tfsubmit.
"""

import argparse
import json

import numpy as np
import tensorflow as tf

from tfsubmit import run_context

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--learning-rate", type=float, default=0.01)
parser.add_argument("--batch-size", type=int, default=32)
parser.add_argument("--samples", type=int, default=2000)
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()

rng = np.random.default_rng(args.seed)
features = rng.normal(size=(args.samples, 16)).astype("float32")
weights = rng.normal(size=(16,)).astype("float32")
labels = (features @ weights + 0.1 * rng.normal(size=args.samples) > 0).astype("float32")

tf.keras.utils.set_random_seed(args.seed)
model = tf.keras.Sequential([
    tf.keras.Input(shape=(16,)),
    tf.keras.layers.Dense(32, activation="relu"),
    tf.keras.layers.Dense(1, activation="sigmoid"),
])
model.compile(
    optimizer=tf.keras.optimizers.Adam(args.learning_rate),
    loss="binary_crossentropy",
    metrics=["accuracy"],
)

ctx = run_context()
history = model.fit(
    features,
    labels,
    epochs=args.epochs,
    batch_size=args.batch_size,
    validation_split=0.2,
    verbose=2,
    callbacks=[ctx.keras_callback()],
)

out = ctx.outputs_dir
model.save(out / "model.keras")
(out / "history.json").write_text(json.dumps(history.history))
print(f"saved model to {out / 'model.keras'}; final loss {history.history['loss'][-1]:.4f}")
