"""Prefect flows: they only wire the tasks together."""

from tfsubmit.flows.submit import submit_training

__all__ = ["submit_training"]
