"""Prefect flows: they only wire the tasks together."""

from tfsubmit.flows.retrain import retrain
from tfsubmit.flows.submit import submit_training

__all__ = ["retrain", "submit_training"]
