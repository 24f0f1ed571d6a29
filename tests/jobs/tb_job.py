"""A Keras job with TensorBoard's own callback writing to run_context().tensorboard_dir,
and tfsubmit's callback logging the same metrics (issue 28)."""
import numpy as np
import tensorflow as tf

from tfsubmit import run_context

ctx = run_context()
rng = np.random.default_rng(0)
x = rng.normal(size=(256, 4)).astype("float32")
y = (x.sum(axis=1, keepdims=True) > 0).astype("float32")
model = tf.keras.Sequential([tf.keras.Input(shape=(4,)), tf.keras.layers.Dense(1,
                                                                             activation="sigmoid")])
model.compile(optimizer="sgd", loss="binary_crossentropy", metrics=["accuracy"])
model.fit(x, y, epochs=3, batch_size=32, verbose=0, validation_split=0.25,
          callbacks=[tf.keras.callbacks.TensorBoard(log_dir=str(ctx.tensorboard_dir)),
                     ctx.keras_callback()])
print("trained with TensorBoard logs in", ctx.tensorboard_dir, flush=True)
