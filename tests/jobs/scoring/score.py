"""An Azure ML scoring script: init() loads the registered Keras model from
AZUREML_MODEL_DIR, as Azure lays it out (<model_dir>/<registered folder>/...); run()
answers {"data": rows} with the predictions, and raises for rows of the wrong width."""
import json
import os

import numpy as np
import tensorflow as tf


def init():
    global model
    model = tf.keras.models.load_model(
        os.path.join(os.environ["AZUREML_MODEL_DIR"], "model", "model.keras"))
    print("score.py: model loaded", flush=True)


def run(raw_data):
    rows = np.asarray(json.loads(raw_data)["data"], dtype="float32")
    if rows.ndim != 2 or rows.shape[1] != 4:
        raise ValueError(f"expected rows of 4 numbers, got shape {rows.shape}")
    return {"predictions": model(rows).numpy().tolist(), "pid": os.getpid()}
