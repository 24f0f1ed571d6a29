"""Hyperparameter sweeps: what users import to describe one, and the tuner that runs it.

    from tfsubmit.tuning import Sweep, choice, uniform, loguniform, MedianStopping

    sweep = Sweep(estimator=TensorFlow(source_directory="examples/keras-synthetic",
                                       entry_script="train.py"),
                  space={"--learning-rate": loguniform(1e-4, 1e-1),
                         "--batch-size": choice(16, 32, 64)},
                  sampling="bayesian", primary_metric="val_loss", goal="minimize",
                  max_total_runs=12, max_concurrent_runs=2,
                  early_termination=MedianStopping(evaluation_interval=1, delay_evaluation=2))
    run = Experiment("tune-demo").submit(sweep)

The sweep itself is plain data (`tfsubmit.spec.sweep`). `tuner.py` runs its trials with
Optuna through an injected `run_trial` (no Prefect), `report.py` makes its summary. This
face imports neither Optuna nor matplotlib.
"""

from tfsubmit.spec.sweep import (
    BanditPolicy,
    Choice,
    LogUniform,
    MedianStopping,
    RandInt,
    Sweep,
    Uniform,
    choice,
    is_sweep_data,
    load_sweep_file,
    loguniform,
    randint,
    uniform,
)

__all__ = ["BanditPolicy", "Choice", "LogUniform", "MedianStopping", "RandInt", "Sweep",
           "Uniform", "choice", "is_sweep_data", "load_sweep_file", "loguniform", "randint",
           "uniform"]
