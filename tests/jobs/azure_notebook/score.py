"""An Azure ML v1 scoring script, ported by its import only."""
import json
import os

import numpy as np
import tensorflow as tf

from tfsubmit.azureml.core.model import Model  # was: from azureml.core.model import Model


def init():
    global model
    path = Model.get_model_path("az-model")
    model = tf.keras.models.load_model(os.path.join(path, "model.keras"))


def run(raw_data):
    data = np.array(json.loads(raw_data)["data"], dtype="float32")
    return model(data).numpy().tolist()
