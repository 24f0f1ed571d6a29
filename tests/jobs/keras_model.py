"""A small Keras model on synthetic data, for serving (issue 26): logs val_loss and
accuracy each epoch, saves outputs/model/model.keras, the same model as a SavedModel in
outputs/savedmodel (Keras' export, with a serving_default signature), and
outputs/expected.json: its predictions for fixed rows, to compare served answers with."""
import argparse
import json
import os

import numpy as np
import tensorflow as tf

from tfsubmit import Run

parser = argparse.ArgumentParser()
parser.add_argument("--learning-rate", type=float, default=0.05)
parser.add_argument("--epochs", type=int, default=3)
args = parser.parse_args()

run = Run.get_context()
rng = np.random.default_rng(0)
x = rng.normal(size=(512, 4)).astype("float32")
y = (x.sum(axis=1, keepdims=True) > 0).astype("float32")
model = tf.keras.Sequential([tf.keras.Input(shape=(4,)),
                             tf.keras.layers.Dense(8, activation="relu"),
                             tf.keras.layers.Dense(1, activation="sigmoid")])
model.compile(optimizer=tf.keras.optimizers.SGD(args.learning_rate), loss="binary_crossentropy",
              metrics=["accuracy"])
for epoch in range(args.epochs):
    history = model.fit(x[:400], y[:400], epochs=1, batch_size=32, verbose=0,
                        validation_data=(x[400:], y[400:]))
    run.log("val_loss", float(history.history["val_loss"][-1]), step=epoch)
    run.log("accuracy", float(history.history["accuracy"][-1]), step=epoch)
os.makedirs("outputs/model", exist_ok=True)
model.save("outputs/model/model.keras")
model.export("outputs/savedmodel")
rows = [[1.0, 2.0, 3.0, 4.0], [-1.0, -2.0, -3.0, -4.0]]
with open("outputs/expected.json", "w") as handle:
    json.dump({"rows": rows, "predictions": model(np.asarray(rows, "float32")).numpy().tolist()},
              handle)
print("saved the model", flush=True)
