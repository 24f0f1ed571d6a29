"""An Azure ML v1 training script, ported by its import only: reads the dataset folder it
is given, trains a small Keras model, logs val_loss each epoch, saves outputs/model/."""
import argparse
import os

import numpy as np
import tensorflow as tf

from tfsubmit.azureml.core import Run  # was: from azureml.core import Run

parser = argparse.ArgumentParser()
parser.add_argument("--data-folder", required=True)
parser.add_argument("--learning-rate", type=float, default=0.05)
parser.add_argument("--batch-size", type=int, default=32)
parser.add_argument("--epochs", type=int, default=3)
args = parser.parse_args()

run = Run.get_context()
data = np.loadtxt(os.path.join(args.data_folder, "train.csv"), delimiter=",", skiprows=1,
                  dtype="float32")
x, y = data[:, :4], data[:, 4:]
model = tf.keras.Sequential([tf.keras.Input(shape=(4,)),
                             tf.keras.layers.Dense(8, activation="relu"),
                             tf.keras.layers.Dense(1, activation="sigmoid")])
model.compile(optimizer=tf.keras.optimizers.SGD(args.learning_rate),
              loss="binary_crossentropy", metrics=["accuracy"])
for _ in range(args.epochs):
    history = model.fit(x[:300], y[:300], epochs=1, batch_size=args.batch_size, verbose=0,
                        validation_data=(x[300:], y[300:]))
    run.log("val_loss", float(history.history["val_loss"][-1]))
run.log("learning_rate", args.learning_rate)
os.makedirs("outputs/model", exist_ok=True)
model.save("outputs/model/model.keras")
print(f"trained with learning rate {args.learning_rate}", flush=True)
