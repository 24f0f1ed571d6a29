"""azureml.train, ported: `dnn.TensorFlow` (the estimator) and `hyperdrive`."""
