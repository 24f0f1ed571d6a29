"""Hyperparameter sweeps: a parameter space, a sampling method, a primary metric and goal, an
early-termination policy, a budget and a concurrency limit.

Users import these from `tfsubmit.tuning`, whose docstring shows a sweep.

Sampling is Optuna's (random, grid, TPE for "bayesian"); the study is kept in the sweep's
run folder, so an interrupted sweep resumes where it stopped. Each trial is a tfsubmit run
(a child flow run of the sweep's flow) with the sampled values merged into script_params.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tfsubmit.errors import JobSpecError
from tfsubmit.spec import goals
from tfsubmit.spec.job import TrainingJob, duration_problem, read_spec_file

SAMPLINGS = ("random", "grid", "bayesian")

# -- the parameter space ------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class Choice:
    values: tuple

    def check(self, name: str) -> None:
        if not self.values:
            raise JobSpecError(f"space: {name!r}: choice() needs at least one value")
        for value in self.values:
            if not isinstance(value, (str, int, float, bool)):
                raise JobSpecError(f"space: {name!r}: choice() values must be numbers or "
                                   f"strings, not {value!r}")

    def to_data(self) -> dict:
        return {"choice": list(self.values)}

    def __repr__(self) -> str:
        return f"choice({', '.join(map(repr, self.values))})"


@dataclass(frozen=True, repr=False)
class Uniform:
    low: float
    high: float
    log = False

    def check(self, name: str) -> None:
        kind = type(self).__name__.lower()
        for bound in (self.low, self.high):
            if not isinstance(bound, (int, float)) or isinstance(bound, bool) \
                    or not math.isfinite(bound):
                raise JobSpecError(f"space: {name!r}: {kind}() bounds must be finite numbers, "
                                   f"got {bound!r}")
        if self.low >= self.high:
            raise JobSpecError(f"space: {name!r}: {kind}(low={self.low}, high={self.high}) needs "
                               "low < high")

    def to_data(self) -> dict:
        return {type(self).__name__.lower(): [self.low, self.high]}

    def __repr__(self) -> str:
        return f"{type(self).__name__.lower()}({self.low}, {self.high})"


@dataclass(frozen=True, repr=False)
class LogUniform(Uniform):
    log = True

    def check(self, name: str) -> None:
        super().check(name)
        if self.low <= 0:
            raise JobSpecError(f"space: {name!r}: loguniform(low={self.low}, ...) needs low > 0")


@dataclass(frozen=True, repr=False)
class RandInt(Uniform):
    """An integer from low to high, both included."""

    def check(self, name: str) -> None:
        super().check(name)
        if int(self.low) != self.low or int(self.high) != self.high:
            raise JobSpecError(f"space: {name!r}: randint() bounds must be integers")


@dataclass(frozen=True, repr=False)
class Transformed:
    """A distribution Optuna has no type for, sampled through a latent value u, uniform in
    [0, 1] (what Optuna samples), then transformed, with Azure ML's meanings:

        quniform(low, high, q)        round(uniform(low, high) / q) * q
        qloguniform(low, high, q)     round(exp(uniform(low, high)) / q) * q
        normal(mu, sigma)             normally distributed
        qnormal(mu, sigma, q)         round(normal(mu, sigma) / q) * q
        lognormal(mu, sigma)          exp(normal(mu, sigma))
        qlognormal(mu, sigma, q)      round(exp(normal(mu, sigma)) / q) * q
    """

    kind: str
    args: tuple

    ARITY = {"quniform": 3, "qloguniform": 3, "normal": 2, "qnormal": 3, "lognormal": 2,
             "qlognormal": 3}

    def check(self, name: str) -> None:
        arity = self.ARITY.get(self.kind)
        if arity is None or len(self.args) != arity:
            raise JobSpecError(f"space: {name!r}: {self.kind}() takes {arity} numbers")
        for arg in self.args:
            if not isinstance(arg, (int, float)) or isinstance(arg, bool) \
                    or not math.isfinite(arg):
                raise JobSpecError(f"space: {name!r}: {self.kind}() arguments must be finite "
                                   f"numbers, got {arg!r}")
        if self.kind in ("quniform", "qloguniform") and self.args[0] >= self.args[1]:
            raise JobSpecError(f"space: {name!r}: {self.kind}(low, high, q) needs low < high")
        if "normal" in self.kind and self.args[1] <= 0:
            raise JobSpecError(f"space: {name!r}: {self.kind}() needs sigma > 0")
        if self.kind.startswith("q") and self.args[-1] <= 0:
            raise JobSpecError(f"space: {name!r}: {self.kind}() needs q > 0")

    def value(self, u: float) -> float:
        """The parameter's value for latent u in [0, 1]."""
        a, b = self.args[0], self.args[1]
        if self.kind in ("quniform", "qloguniform"):
            x = a + (b - a) * u
            x = math.exp(x) if self.kind == "qloguniform" else x
        else:
            x = statistics.NormalDist(a, b).inv_cdf(min(max(u, 1e-12), 1 - 1e-12))
            x = math.exp(x) if "lognormal" in self.kind else x
        if self.kind.startswith("q"):
            q = self.args[2]
            x = round(x / q) * q
            return int(x) if float(x).is_integer() and float(q).is_integer() else x
        return x

    def to_data(self) -> dict:
        return {self.kind: list(self.args)}

    def __repr__(self) -> str:
        return f"{self.kind}({', '.join(map(repr, self.args))})"


def quniform(low: float, high: float, q: float) -> Transformed:
    return Transformed("quniform", (low, high, q))


def qloguniform(low: float, high: float, q: float) -> Transformed:
    return Transformed("qloguniform", (low, high, q))


def normal(mu: float, sigma: float) -> Transformed:
    return Transformed("normal", (mu, sigma))


def qnormal(mu: float, sigma: float, q: float) -> Transformed:
    return Transformed("qnormal", (mu, sigma, q))


def lognormal(mu: float, sigma: float) -> Transformed:
    return Transformed("lognormal", (mu, sigma))


def qlognormal(mu: float, sigma: float, q: float) -> Transformed:
    return Transformed("qlognormal", (mu, sigma, q))


Parameter = Choice | Uniform | Transformed


def choice(*values: Any) -> Choice:
    """One of the values: `choice(16, 32, 64)` (or `choice([16, 32, 64])`)."""
    if len(values) == 1 and isinstance(values[0], (list, tuple)):
        values = tuple(values[0])
    return Choice(tuple(values))


def uniform(low: float, high: float) -> Uniform:
    return Uniform(low, high)


def loguniform(low: float, high: float) -> LogUniform:
    """Between low and high, uniform on a log scale (learning rates)."""
    return LogUniform(low, high)


def randint(low: int, high: int) -> RandInt:
    return RandInt(low, high)


_KINDS = {"choice": choice, "uniform": uniform, "loguniform": loguniform, "randint": randint,
          "quniform": quniform, "qloguniform": qloguniform, "normal": normal,
          "qnormal": qnormal, "lognormal": lognormal, "qlognormal": qlognormal}


def parameter_from_data(name: str, data: Any) -> Parameter:
    """`{"choice": [16, 32]}`, `{"loguniform": [1e-4, 1e-1]}`, ... (the YAML form)."""
    if isinstance(data, (Choice, Uniform, Transformed)):
        return data
    if not isinstance(data, dict) or len(data) != 1 or next(iter(data)) not in _KINDS:
        raise JobSpecError(f"space: {name!r}: write one of {', '.join(_KINDS)} with its "
                           f"arguments, e.g. {{loguniform: [0.0001, 0.1]}}; got {data!r}")
    kind, args = next(iter(data.items()))
    if kind == "choice":
        return choice(*(args if isinstance(args, list) else [args]))
    arity = Transformed.ARITY.get(kind, 2)
    if not isinstance(args, list) or len(args) != arity:
        raise JobSpecError(f"space: {name!r}: {kind} takes {arity} numbers "
                           f"({'[low, high]' if arity == 2 else '[a, b, q]'}), got {args!r}")
    return _KINDS[kind](*args)


# -- early termination --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Policy:
    evaluation_interval: int = 1
    delay_evaluation: int = 0

    def check(self) -> None:
        if self.evaluation_interval < 1:
            raise JobSpecError("early_termination: evaluation_interval must be at least 1")
        if self.delay_evaluation < 0:
            raise JobSpecError("early_termination: delay_evaluation must not be negative")

    def due(self, step: int) -> bool:
        """Evaluate at this step (1 = the metric's first value)?"""
        return step > self.delay_evaluation and step % self.evaluation_interval == 0

    def to_data(self) -> dict:
        return {"policy": self.name, **asdict(self)}


    def peers(self, step: int, others: list[list[float]]) -> list[list[float]]:
        """The other trials past the delay, each up to this step (or as far as it got:
        trials run side by side and one may be a step behind)."""
        return [other[:step] for other in others if len(other) > self.delay_evaluation]


@dataclass(frozen=True)
class MedianStopping(_Policy):
    """Stop a trial whose best value so far is worse than the median of the other trials'
    running averages up to the same step."""

    name = "median_stopping"

    def verdict(self, values: list[float], others: list[list[float]], goal: str) -> str | None:
        step = len(values)
        peers = self.peers(step, others)
        if not self.due(step) or not peers:
            return None
        median = statistics.median(statistics.fmean(peer) for peer in peers)
        best = goals.best(values, goal)
        if goals.worse(best, median, goal):
            return (f"median stopping at step {step}: best {best:.4g} is worse than the median "
                    f"{median:.4g} of {len(peers)} other trial(s)' running averages")
        return None


@dataclass(frozen=True)
class BanditPolicy(_Policy):
    """Stop a trial whose value falls outside the slack of the best trial's value at the same
    step: `slack_factor` (a ratio) or `slack_amount` (an absolute distance)."""

    slack_factor: float | None = None
    slack_amount: float | None = None
    name = "bandit"

    def check(self) -> None:
        super().check()
        if (self.slack_factor is None) == (self.slack_amount is None):
            raise JobSpecError("early_termination: bandit needs exactly one of slack_factor or "
                               "slack_amount")
        if (self.slack_factor or 0) < 0 or (self.slack_amount or 0) < 0:
            raise JobSpecError("early_termination: bandit slack must not be negative")

    def verdict(self, values: list[float], others: list[list[float]], goal: str) -> str | None:
        step = len(values)
        at_step = [peer[-1] for peer in self.peers(step, others)]
        if not self.due(step) or not at_step:
            return None
        best = goals.best(at_step, goal)
        sign = 1 if goal == "minimize" else -1
        if self.slack_factor is not None:
            limit = best * (1 + self.slack_factor) ** sign
        else:
            limit = best + sign * self.slack_amount
        if goals.worse(values[-1], limit, goal):
            return (f"bandit at step {step}: {values[-1]:.4g} is outside the slack of the best "
                    f"{best:.4g} (limit {limit:.4g})")
        return None


@dataclass(frozen=True)
class TruncationSelection(_Policy):
    """At each evaluation, stop a trial among the worst `truncation_percentage` percent of
    the trials at the same step (Azure ML's TruncationSelectionPolicy)."""

    truncation_percentage: int = 10
    name = "truncation_selection"

    def check(self) -> None:
        super().check()
        if not 1 <= self.truncation_percentage <= 99:
            raise JobSpecError("early_termination: truncation_percentage must be 1 to 99")

    def verdict(self, values: list[float], others: list[list[float]], goal: str) -> str | None:
        step = len(values)
        at_step = [peer[-1] for peer in self.peers(step, others) if len(peer) >= step]
        if not self.due(step) or not at_step:
            return None
        everyone = sorted([*at_step, values[-1]], reverse=goal == "minimize")  # worst first
        cut = len(everyone) * self.truncation_percentage // 100
        if cut and not goals.better(values[-1], everyone[cut - 1], goal):
            return (f"truncation selection at step {step}: {values[-1]:.4g} is among the "
                    f"worst {self.truncation_percentage}% of {len(everyone)} trials")
        return None


_POLICIES = {"median_stopping": MedianStopping, "bandit": BanditPolicy,
             "truncation_selection": TruncationSelection}


def policy_from_data(data: Any) -> MedianStopping | BanditPolicy | TruncationSelection | None:
    if data is None or isinstance(data, _Policy):
        return data
    if not isinstance(data, dict) or data.get("policy") not in _POLICIES:
        raise JobSpecError("early_termination: write {policy: median_stopping, ...}, "
                           "{policy: bandit, slack_factor: ...} or {policy: "
                           f"truncation_selection, truncation_percentage: ...}}; got {data!r}")
    fields = {k: v for k, v in data.items() if k != "policy"}
    cls = _POLICIES[data["policy"]]
    try:
        return cls(**fields)
    except TypeError as exc:
        raise JobSpecError(f"early_termination: {exc}") from None


# -- the sweep ----------------------------------------------------------------------------------


class Sweep:
    """A hyperparameter sweep over `estimator`'s script_params; submit it like a job."""

    def __init__(
        self,
        estimator: TrainingJob,
        space: dict[str, Any],
        *,
        primary_metric: str,
        goal: str = "minimize",
        sampling: str = "random",
        max_total_runs: int = 10,
        max_concurrent_runs: int = 1,
        early_termination: MedianStopping | BanditPolicy | TruncationSelection | dict
        | None = None,
        seed: int | None = None,
        max_duration_seconds: float | None = None,
    ) -> None:
        if not isinstance(estimator, TrainingJob):
            raise JobSpecError("estimator: must be a TensorFlow(...) job")
        if estimator.script_params and not isinstance(estimator.script_params, dict):
            raise JobSpecError("estimator.script_params: a sweep merges sampled values into "
                               "script_params, so they must be a mapping, not a list")
        if not isinstance(space, dict) or not space:
            raise JobSpecError("space: needs at least one parameter, e.g. "
                               "{'--learning-rate': loguniform(1e-4, 1e-1)}")
        self.space = {name: parameter_from_data(name, value) for name, value in space.items()}
        for name, parameter in self.space.items():
            parameter.check(name)
        if sampling not in SAMPLINGS:
            raise JobSpecError(f"sampling: {sampling!r} is not one of {', '.join(SAMPLINGS)}")
        if sampling == "grid":
            for name, parameter in self.space.items():
                if isinstance(parameter, Transformed) or isinstance(parameter, Uniform) \
                        and not isinstance(parameter, RandInt):
                    raise JobSpecError(
                        f"space: {name!r}: grid sampling needs discrete values, but "
                        f"{parameter!r} is a continuous range; use choice(...) or randint(...)")
        goals.check_goal(goal)
        if not isinstance(primary_metric, str) or not primary_metric:
            raise JobSpecError("primary_metric: name the metric the script logs, e.g. val_loss")
        for field, value in (("max_total_runs", max_total_runs),
                             ("max_concurrent_runs", max_concurrent_runs)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise JobSpecError(f"{field}: must be a whole number of at least 1 "
                                   f"(got {value!r})")
        if max_duration_seconds is not None and duration_problem(max_duration_seconds):
            raise JobSpecError("max_duration_seconds: the whole sweep's limit, a number of "
                               f"seconds above 0 (got {max_duration_seconds!r})")
        self.early_termination = policy_from_data(early_termination)
        if self.early_termination is not None:
            self.early_termination.check()
        self.estimator = estimator
        self.primary_metric = primary_metric
        self.goal = goal
        self.sampling = sampling
        self.max_total_runs = max_total_runs
        self.max_concurrent_runs = max_concurrent_runs
        self.seed = seed
        self.max_duration_seconds = max_duration_seconds

    def __repr__(self) -> str:
        return (f"Sweep({self.sampling}, {self.max_total_runs} runs, {self.primary_metric} "
                f"{self.goal}, space={self.space})")

    @property
    def grid(self) -> dict[str, list]:
        """Every value of each parameter (grid sampling)."""
        return {name: list(p.values) if isinstance(p, Choice)
                else list(range(int(p.low), int(p.high) + 1))
                for name, p in self.space.items()}

    @property
    def grid_size(self) -> int:
        return math.prod(len(values) for values in self.grid.values())

    @property
    def total_runs(self) -> int:
        """Trials to run: max_total_runs, or fewer when a grid has fewer points."""
        if self.sampling == "grid":
            return min(self.max_total_runs, self.grid_size)
        return self.max_total_runs

    def values_of(self, sampled: dict[str, Any]) -> dict[str, Any]:
        """A trial's values from what the sampler drew (a Transformed parameter's latent
        value becomes its value)."""
        return {name: self.space[name].value(value)
                if isinstance(self.space.get(name), Transformed) else value
                for name, value in sampled.items()}

    def trial_job(self, params: dict[str, Any]) -> TrainingJob:
        data = self.estimator.to_dict()
        data["script_params"] = {**(data["script_params"] or {}), **params}
        return TrainingJob.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return {
            "estimator": self.estimator.to_dict(),
            "space": {name: p.to_data() for name, p in self.space.items()},
            "sampling": self.sampling,
            "primary_metric": self.primary_metric,
            "goal": self.goal,
            "max_total_runs": self.max_total_runs,
            "max_concurrent_runs": self.max_concurrent_runs,
            "early_termination": self.early_termination and self.early_termination.to_data(),
            "seed": self.seed,
            "max_duration_seconds": self.max_duration_seconds,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, base_dir: Path | None = None) -> Sweep:
        data = dict(data)
        estimator = data.pop("estimator", None)
        if not isinstance(estimator, dict):
            raise JobSpecError("estimator: a sweep needs the job to tune under `estimator:` "
                               "(source_directory, entry_script, ...)")
        known = {"space", "sampling", "primary_metric", "goal", "max_total_runs",
                 "max_concurrent_runs", "early_termination", "seed", "max_duration_seconds"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise JobSpecError(f"{unknown[0]}: unknown sweep field (known: "
                               f"{', '.join(sorted(known | {'estimator'}))})")
        if "primary_metric" not in data:
            raise JobSpecError("primary_metric: required field is missing")
        try:
            job = TrainingJob.from_dict(estimator, base_dir=base_dir)
        except JobSpecError as exc:
            raise JobSpecError(f"estimator.{exc}") from None
        return cls(job, data.pop("space", None), **data)


def is_sweep_data(data: Any) -> bool:
    return isinstance(data, dict) and "space" in data and "estimator" in data


def load_sweep_file(path: str | Path) -> tuple[Sweep, str | None]:
    """Read a sweep YAML file; returns the sweep and its optional `experiment` name."""
    path = Path(path)
    data, experiment = read_spec_file(path, "sweep")
    if not is_sweep_data(data):
        raise JobSpecError(f"sweep file {path} needs `estimator:` and `space:`")
    try:
        return Sweep.from_dict(data, base_dir=path.resolve().parent), experiment
    except JobSpecError as exc:
        raise JobSpecError(f"{path}: {exc}") from None
