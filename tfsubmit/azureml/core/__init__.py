"""azureml.core, ported: `from tfsubmit.azureml.core import Workspace, Experiment, ...`.

Names load on first use: a training script's `from tfsubmit.azureml.core import Run` works
in the job's environment, which has TensorFlow but not tfsubmit's own dependencies.
"""

from __future__ import annotations

from importlib import import_module

_LAZY = {
    "Run": "tfsubmit.azureml.core.run",
    "Workspace": "tfsubmit.azureml.core.workspace",
    "Experiment": "tfsubmit.azureml.core.experiment",
    "ScriptRunConfig": "tfsubmit.azureml.core.experiment",
    "Environment": "tfsubmit.azureml.core.environment",
    "Dataset": "tfsubmit.azureml.core.dataset",
    "ComputeTarget": "tfsubmit.azureml.core.compute",
    "Model": "tfsubmit.azureml.core.model",
    "Webservice": "tfsubmit.azureml.core.webservice",
}

__all__ = [*_LAZY]


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tfsubmit.azureml.core' has no attribute {name!r}")
