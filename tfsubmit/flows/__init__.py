"""Prefect flows: wiring only. Deployments name them by path (deployments/prefect.yaml):
`tfsubmit/flows/submit.py:submit_training`, `tfsubmit/flows/retrain.py:retrain`."""

from tfsubmit.flows.retrain import retrain
from tfsubmit.flows.submit import submit_training

# The sweep flow (tfsubmit.flows.sweep) is imported where it is used: it loads Optuna.
__all__ = ["retrain", "submit_training"]
