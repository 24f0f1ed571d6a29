"""azureml.core.run.Run: in a training script, `Run.get_context()` (the in-job runtime,
standard library only); on the submitting side, `Run(experiment, run_id)`."""

from __future__ import annotations

from typing import Any

from tfsubmit.runtime.context import Run as _InJobRun


class Run:
    """Azure ML v1's Run. Inside a job: `Run.get_context()`. Elsewhere: `Run(experiment,
    run_id)` for a run of that experiment, with the submitting side's methods
    (get_details, get_metrics, wait_for_completion, register_model, ...)."""

    get_context = staticmethod(_InJobRun.get_context)

    def __new__(cls, experiment: Any, run_id: str, **ignored: Any) -> Any:
        from tfsubmit.azureml.core._runs import submitted_run

        return submitted_run(experiment, run_id)
