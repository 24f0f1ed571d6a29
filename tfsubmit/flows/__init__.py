"""Prefect flows: wiring only. Deployments name them by path (deployments/prefect.yaml):
`tfsubmit/flows/submit.py:submit_training`, `tfsubmit/flows/retrain.py:retrain`."""

from tfsubmit.flows.retrain import retrain
from tfsubmit.flows.submit import submit_training
from tfsubmit.flows.sweep import run_sweep

__all__ = ["retrain", "run_sweep", "submit_training"]
