"""azureml.train.dnn.TensorFlow: tfsubmit's estimator, which takes Azure's arguments."""

from tfsubmit.spec.job import TensorFlow

__all__ = ["TensorFlow"]
