"""Plain, validated data: what a job is, what a sweep is, what launchers hand to targets.

    job.py          TrainingJob (alias TensorFlow), the job YAML reader
    sweep.py        Sweep, its parameter space and early-termination policies
    goals.py        minimize / maximize, and comparing values by a goal
    environment.py  EnvironmentSpec / Environment: what a job's Python environment holds
    process.py      Node, ProcessSpec, LaunchOptions: the launcher <-> target contract

Nothing here imports a layer above it. `environment.py` and `process.py` use only the
standard library: the host agent imports them on machines that have nothing but Python 3.
"""
