"""Inside the job: what a training script and the job's processes use.

Standard library only: this package runs in the job's environment, which has TensorFlow
but not Prefect, pydantic, paramiko or docker (an import-linter contract keeps it so).

    context.py   run_context(): metric logging, the outputs folder
    metrics.py   the metric files' names and format (written here, read by the orchestrator)
    rank.py      `python -m tfsubmit.runtime.rank SCRIPT ARGS`: one Horovod rank under mpirun
"""

from tfsubmit.runtime.context import RunContext, run_context
from tfsubmit.runtime.metrics import TOTAL_EPOCHS, read_metrics

__all__ = ["TOTAL_EPOCHS", "RunContext", "read_metrics", "run_context"]
