"""The workspace's long-lived flow process (`python -m tfsubmit.daemon.runner`): imports
Prefect and tfsubmit's flows once, registers the deployments, and serves the forks of
Prefect's engine that run each flow run. The one module that imports the flows from
below the user-facing layer."""
