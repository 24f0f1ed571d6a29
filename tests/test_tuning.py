"""Pure tests of sweep specs and early-termination policies: errors name the parameter."""

from __future__ import annotations

from pathlib import Path

import pytest

from tfsubmit import TensorFlow
from tfsubmit.errors import JobSpecError
from tfsubmit.tuning import (
    BanditPolicy,
    MedianStopping,
    Sweep,
    choice,
    load_sweep_file,
    loguniform,
    randint,
    uniform,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def job(tmp_path) -> TensorFlow:
    (tmp_path / "train.py").write_text("print('hi')\n")
    return TensorFlow(source_directory=str(tmp_path), entry_script="train.py",
                      script_params={"--epochs": 2})


def sweep(job, space, **fields) -> Sweep:
    return Sweep(job, space, primary_metric=fields.pop("primary_metric", "val_loss"), **fields)


@pytest.mark.parametrize("space, sampling, message", [
    ({"--lr": choice()}, "random", r"space: '--lr': choice\(\) needs at least one value"),
    ({"--lr": uniform(0.1, 0.1)}, "random", r"space: '--lr': uniform\(low=0.1, high=0.1\) "
                                            "needs low < high"),
    ({"--lr": loguniform(0.0, 0.1)}, "random", "space: '--lr': loguniform.*needs low > 0"),
    ({"--lr": loguniform(1e-4, 1e-1)}, "grid", "space: '--lr': grid sampling needs discrete "
                                               r"values, but loguniform\(0.0001, 0.1\) is a "
                                               "continuous range"),
    ({"--lr": choice(0.1)}, "annealing", "sampling: 'annealing' is not one of random, grid, "
                                         "bayesian"),
    ({"--n": randint(1, 2.5)}, "random", "space: '--n': randint.. bounds must be integers"),
    ({"--lr": {"gaussian": [1, 2]}}, "random", "space: '--lr': write one of choice"),
    ({"--lr": {"qnormal": [1, 2]}}, "random", r"space: '--lr': qnormal takes 3 numbers"),
    ({}, "random", "space: needs at least one parameter"),
])
def test_bad_spaces_name_the_parameter(job, space, sampling, message):
    with pytest.raises(JobSpecError, match=message):
        sweep(job, space, sampling=sampling)


@pytest.mark.parametrize("fields, message", [
    ({"goal": "lowest"}, "goal: 'lowest' is not one of minimize, maximize"),
    ({"max_total_runs": 0}, "max_total_runs: must be a whole number of at least 1"),
    ({"max_concurrent_runs": 1.5}, "max_concurrent_runs: must be a whole number"),
    ({"primary_metric": ""}, "primary_metric: name the metric"),
    ({"max_duration_seconds": 0}, "max_duration_seconds: the whole sweep's limit"),
    ({"max_duration_seconds": "1h"}, "max_duration_seconds: .* above 0 .got '1h'"),
    ({"early_termination": BanditPolicy()}, "bandit needs exactly one of slack_factor"),
    ({"early_termination": {"policy": "truncation"}}, "early_termination: write"),
    ({"early_termination": MedianStopping(evaluation_interval=0)},
     "evaluation_interval must be at least 1"),
])
def test_bad_sweep_fields_are_named(job, fields, message):
    with pytest.raises(JobSpecError, match=message):
        sweep(job, {"--lr": choice(0.1, 0.2)}, **fields)


def test_list_script_params_cannot_take_sampled_values(tmp_path):
    (tmp_path / "train.py").write_text("")
    listed = TensorFlow(source_directory=str(tmp_path), entry_script="train.py",
                        script_params=["--epochs", "2"])
    with pytest.raises(JobSpecError, match="estimator.script_params: .* must be a mapping"):
        sweep(listed, {"--lr": choice(0.1)})


def test_grid_size_limits_the_total_and_trials_merge_params(job):
    grid = sweep(job, {"--lr": choice(0.1, 0.2, 0.3), "--layers": randint(1, 2)},
                 sampling="grid", max_total_runs=100)
    assert grid.grid == {"--lr": [0.1, 0.2, 0.3], "--layers": [1, 2]}
    assert grid.total_runs == 6
    trial = grid.trial_job({"--lr": 0.2, "--layers": 2})
    assert trial.script_arguments() == ["--epochs", "2", "--lr", "0.2", "--layers", "2"]


def test_round_trip_and_yaml(job, tmp_path):
    original = sweep(job, {"--lr": loguniform(1e-4, 1e-1), "--bs": choice(16, 32)},
                     sampling="bayesian", max_total_runs=12, max_concurrent_runs=2,
                     early_termination=MedianStopping(evaluation_interval=1, delay_evaluation=2))
    again = Sweep.from_dict(original.to_dict())
    assert again.to_dict() == original.to_dict()
    loaded, experiment = load_sweep_file(ROOT / "examples" / "sweep" / "sweep.yaml")
    assert experiment == "tune-demo" and loaded.sampling == "bayesian"
    assert loaded.early_termination == MedianStopping(evaluation_interval=1, delay_evaluation=2)
    assert Path(loaded.estimator.source_directory).name == "keras-synthetic"
    bad = tmp_path / "sweep.yaml"
    bad.write_text("estimator: {source_directory: ., entry_script: nope.py}\n"
                   "space: {--lr: {choice: [1]}}\nprimary_metric: loss\n")
    with pytest.raises(JobSpecError, match="sweep.yaml: estimator.entry_script: 'nope.py'"):
        load_sweep_file(bad)


def test_median_stopping():
    policy = MedianStopping(evaluation_interval=1, delay_evaluation=2)
    good = [[0.5, 0.3, 0.2, 0.1], [0.6, 0.4, 0.3, 0.2]]
    assert policy.verdict([0.7, 0.7], good, "minimize") is None  # still in the delay
    assert "median stopping at step 3" in policy.verdict([0.7, 0.7, 0.7], good, "minimize")
    assert policy.verdict([0.5, 0.3, 0.25], good, "minimize") is None  # better than median
    assert policy.verdict([0.7, 0.7, 0.7], [], "minimize") is None  # nobody to compare with
    # maximize: a low accuracy is the bad one
    assert policy.verdict([0.5, 0.5, 0.5], [[0.9, 0.9, 0.9]], "maximize")
    assert policy.verdict([0.95, 0.95, 0.95], [[0.9, 0.9, 0.9]], "maximize") is None
    # a peer a step behind still counts (trials run side by side)
    assert policy.verdict([0.7, 0.7, 0.7, 0.7], [[0.2, 0.2, 0.2]], "minimize")


def test_bandit_slack():
    policy = BanditPolicy(slack_factor=0.2, delay_evaluation=0)
    assert policy.verdict([1.3], [[1.0]], "minimize")  # limit 1.2
    assert policy.verdict([1.1], [[1.0]], "minimize") is None
    assert policy.verdict([0.7], [[0.9]], "maximize")  # limit 0.75
    amount = BanditPolicy(slack_amount=0.05, evaluation_interval=2)
    assert amount.verdict([0.5], [[0.1, 0.1]], "minimize") is None  # step 1: not due
    assert "bandit at step 2" in amount.verdict([0.5, 0.5], [[0.1, 0.1]], "minimize")


def test_truncation_selection_stops_the_worst_percent():
    from tfsubmit.spec.sweep import TruncationSelection

    policy = TruncationSelection(truncation_percentage=25)
    peers = [[0.1], [0.2], [0.3]]
    assert "worst 25% of 4" in policy.verdict([0.9], peers, "minimize")
    assert policy.verdict([0.15], peers, "minimize") is None
    assert policy.verdict([0.05], peers, "maximize")  # lowest accuracy: the worst
    assert policy.verdict([0.9], [[0.1]], "minimize") is None  # 25% of 2 is no trial
    with pytest.raises(JobSpecError, match="truncation_percentage must be 1 to 99"):
        TruncationSelection(truncation_percentage=0).check()


def test_azures_distributions_keep_their_meanings():
    """Azure's q*, normal and lognormal: a latent uniform in [0, 1], transformed; its
    loguniform(min, max) is exp(uniform(min, max)) and randint(upper) is [0, upper)."""
    import math
    import statistics

    from tfsubmit.azureml.train import hyperdrive as hd

    latent = [(i + 0.5) / 2000 for i in range(2000)]  # the latent's quantiles
    normal = [hd.normal(3.0, 2.0).value(u) for u in latent]
    assert abs(statistics.fmean(normal) - 3.0) < 0.01
    assert abs(statistics.pstdev(normal) - 2.0) < 0.05
    lognormal = [hd.lognormal(0.0, 1.0).value(u) for u in latent]
    assert abs(statistics.median(lognormal) - 1.0) < 0.01 and min(lognormal) > 0
    assert {hd.quniform(0, 10, 5).value(u) for u in latent} == {0, 5, 10}
    assert all(v % 4 == 0 for v in (hd.qnormal(20, 8, 4).value(u) for u in latent))
    assert {hd.qloguniform(0, math.log(100), 10).value(u) for u in latent} <= set(range(0, 101,
                                                                                         10))
    assert all(v % 0.5 == 0 for v in (hd.qlognormal(1, 0.5, 0.5).value(u) for u in latent))
    log = hd.loguniform(-6, -1)
    assert math.isclose(log.low, math.exp(-6)) and math.isclose(log.high, math.exp(-1))
    assert (hd.randint(5).low, hd.randint(5).high) == (0, 4)
    with pytest.raises(JobSpecError, match="needs sigma > 0"):
        hd.normal(0, 0).check("x")


def test_a_sweep_samples_transformed_parameters_through_optuna(job, tmp_path):
    """The tuner asks Optuna for the latent value and the trial gets the transformed one."""
    from tfsubmit.azureml.train import hyperdrive as hd
    from tfsubmit.tuning.tuner import _distributions

    sweep = Sweep(job, {"--units": hd.qnormal(64, 16, 8), "--lr": hd.loguniform(-6, -1)},
                  primary_metric="loss")
    assert {k: type(v).__name__ for k, v in _distributions(sweep).items()} == \
        {"--units": "FloatDistribution", "--lr": "FloatDistribution"}
    values = sweep.values_of({"--units": 0.5, "--lr": 0.01})
    assert values == {"--units": 64, "--lr": 0.01}
    with pytest.raises(JobSpecError, match="grid sampling needs discrete values"):
        Sweep(job, {"--units": hd.qnormal(64, 16, 8)}, primary_metric="loss", sampling="grid")
    again = Sweep.from_dict({**sweep.to_dict()})
    assert again.space["--units"].to_data() == {"qnormal": [64, 16, 8]}
