"""Azure ML v1's SDK, ported by one prefix: `from azureml.core import Experiment` becomes
`from tfsubmit.azureml.core import Experiment`, and the notebook, submitting script,
training script and scoring script run on compute you own.

Thin mappings onto tfsubmit's own API (tfsubmit.api, tfsubmit.spec, tfsubmit.serving),
which stays the documented one; what each Azure name maps to is in docs/porting.md.
Azure's cloud arguments (subscription, resource group, VM sizes) are accepted and not used:
the first one used says so once.

    azureml.core             Workspace, Experiment, Environment, ScriptRunConfig, Dataset,
                             ComputeTarget, Run, Model, ...
    azureml.core.model       Model, InferenceConfig
    azureml.core.webservice  Webservice, LocalWebservice, AciWebservice
    azureml.core.runconfig   MpiConfiguration, TensorflowConfiguration
    azureml.train.dnn        TensorFlow (the estimator)
    azureml.train.hyperdrive HyperDriveConfig, samplings, parameter expressions, policies
"""
