"""What users import: Experiment, and the runs it returns (Run, SweepRun, DeploymentRun).

    experiment.py  Experiment: submit a job, a sweep, or a job to a Prefect deployment
    runs.py        BaseRun and its kinds; open_run(id) finds any of them
"""

from tfsubmit.api.experiment import Experiment
from tfsubmit.api.runs import BaseRun, DeploymentRun, Run, SweepRun, open_run

__all__ = ["BaseRun", "DeploymentRun", "Experiment", "Run", "SweepRun", "open_run"]
