"""azureml.train.hyperdrive, ported: HyperDriveConfig onto a tfsubmit Sweep (Optuna's
samplers; the trials are runs of the experiment, child flow runs in Prefect).

Parameter expressions keep Azure's meanings: `randint(upper)` is an integer in
[0, upper); `loguniform(min, max)` is exp(uniform(min, max)), so its bounds are
exponents; `q...` round to multiples of q; `lognormal(mu, sigma)` is exp(normal(mu, sigma)).
"""

from __future__ import annotations

import math
from typing import Any

from tfsubmit.azureml._notes import not_used
from tfsubmit.errors import JobSpecError
from tfsubmit.spec import sweep as _sweep

# -- parameter expressions -------------------------------------------------------------------


def choice(*options: Any) -> _sweep.Choice:
    return _sweep.choice(*options)


def randint(upper: int) -> _sweep.RandInt:
    """An integer in [0, upper)."""
    return _sweep.RandInt(0, int(upper) - 1)


def uniform(min_value: float, max_value: float) -> _sweep.Uniform:
    return _sweep.uniform(min_value, max_value)


def quniform(min_value: float, max_value: float, q: float) -> _sweep.Transformed:
    return _sweep.quniform(min_value, max_value, q)


def loguniform(min_value: float, max_value: float) -> _sweep.LogUniform:
    """exp(uniform(min_value, max_value)): log-uniform between e**min and e**max."""
    return _sweep.loguniform(math.exp(min_value), math.exp(max_value))


def qloguniform(min_value: float, max_value: float, q: float) -> _sweep.Transformed:
    return _sweep.qloguniform(min_value, max_value, q)


def normal(mu: float, sigma: float) -> _sweep.Transformed:
    return _sweep.normal(mu, sigma)


def qnormal(mu: float, sigma: float, q: float) -> _sweep.Transformed:
    return _sweep.qnormal(mu, sigma, q)


def lognormal(mu: float, sigma: float) -> _sweep.Transformed:
    return _sweep.lognormal(mu, sigma)


def qlognormal(mu: float, sigma: float, q: float) -> _sweep.Transformed:
    return _sweep.qlognormal(mu, sigma, q)


# -- sampling ----------------------------------------------------------------------------------


class _Sampling:
    method = "random"

    def __init__(self, parameter_space: dict[str, Any], **ignored: Any) -> None:
        if not isinstance(parameter_space, dict) or not parameter_space:
            raise JobSpecError(f"{type(self).__name__}: give a parameter space, e.g. "
                               "{'--learning-rate': loguniform(-6, -1)}")
        # Azure passes each parameter to the script as `--name value`.
        self.parameter_space = {name if name.startswith("-") else f"--{name}": value
                                for name, value in parameter_space.items()}


class RandomParameterSampling(_Sampling):
    method = "random"


class GridParameterSampling(_Sampling):
    method = "grid"


class BayesianParameterSampling(_Sampling):
    method = "bayesian"


# -- early termination -------------------------------------------------------------------------


def BanditPolicy(slack_factor: float | None = None, slack_amount: float | None = None,
                 evaluation_interval: int = 1, delay_evaluation: int = 0) -> _sweep.BanditPolicy:
    return _sweep.BanditPolicy(evaluation_interval=evaluation_interval,
                               delay_evaluation=delay_evaluation, slack_factor=slack_factor,
                               slack_amount=slack_amount)


def MedianStoppingPolicy(evaluation_interval: int = 1, delay_evaluation: int = 0
                         ) -> _sweep.MedianStopping:
    return _sweep.MedianStopping(evaluation_interval=evaluation_interval,
                                 delay_evaluation=delay_evaluation)


def TruncationSelectionPolicy(truncation_percentage: int, evaluation_interval: int = 1,
                              delay_evaluation: int = 0) -> _sweep.TruncationSelection:
    return _sweep.TruncationSelection(evaluation_interval=evaluation_interval,
                                      delay_evaluation=delay_evaluation,
                                      truncation_percentage=truncation_percentage)


def NoTerminationPolicy() -> None:
    return None


class PrimaryMetricGoal:
    MAXIMIZE = "MAXIMIZE"
    MINIMIZE = "MINIMIZE"


# -- the config ------------------------------------------------------------------------------


class HyperDriveConfig:
    """A HyperDrive sweep of a ScriptRunConfig (`run_config`) or an estimator."""

    def __init__(self, hyperparameter_sampling: _Sampling, primary_metric_name: str,
                 primary_metric_goal: str, max_total_runs: int,
                 max_concurrent_runs: int | None = None, max_duration_minutes: int = 10080,
                 policy: Any = None, estimator: Any = None, run_config: Any = None,
                 resume_from: Any = None, resume_child_runs: Any = None,
                 pipeline: Any = None, debug_flag: Any = None, **ignored: Any) -> None:
        if (estimator is None) == (run_config is None):
            raise JobSpecError("HyperDriveConfig: give exactly one of run_config (a "
                               "ScriptRunConfig) or estimator")
        if not isinstance(hyperparameter_sampling, _Sampling):
            raise JobSpecError("hyperparameter_sampling: a RandomParameterSampling, "
                               "GridParameterSampling or BayesianParameterSampling")
        goal = str(primary_metric_goal).upper()
        if goal not in (PrimaryMetricGoal.MAXIMIZE, PrimaryMetricGoal.MINIMIZE):
            raise JobSpecError(f"primary_metric_goal: {primary_metric_goal!r} is not "
                               "PrimaryMetricGoal.MAXIMIZE or MINIMIZE")
        if resume_from or resume_child_runs:
            not_used("HyperDriveConfig's resume_from", "resume a sweep with run.resume()")
        self.sampling = hyperparameter_sampling
        self.primary_metric_name = primary_metric_name
        self.primary_metric_goal = goal
        self.max_total_runs = max_total_runs
        self.max_concurrent_runs = max_concurrent_runs or 1
        self.max_duration_minutes = max_duration_minutes
        self.policy = policy
        self.estimator = estimator
        self.run_config = run_config

    def to_sweep(self) -> _sweep.Sweep:
        """The tfsubmit sweep. max_duration_minutes limits the whole sweep, as in Azure (its
        running trials are canceled when it is reached); a trial's own limit is its
        config's max_run_duration_seconds."""
        job = self.run_config.to_job() if self.run_config is not None else self.estimator
        if job.script_params is not None and not isinstance(job.script_params, dict):
            raise JobSpecError("arguments: HyperDrive adds its values as `--name value`, so "
                               "the script's arguments must be flag and value pairs")
        return _sweep.Sweep(job, self.sampling.parameter_space,
                            primary_metric=self.primary_metric_name,
                            goal=self.primary_metric_goal.lower(),
                            sampling=self.sampling.method, max_total_runs=self.max_total_runs,
                            max_concurrent_runs=self.max_concurrent_runs,
                            early_termination=self.policy,
                            max_duration_seconds=self.max_duration_minutes * 60)
