"""Serving registered models: endpoints (endpoints.py), deployed by the `deploy-model` flow
and supervised where they run (tfsubmit/endpoint/)."""
