"""tfsubmit: submit TensorFlow training jobs to compute you own, each run a Prefect flow.

    from tfsubmit import Experiment, TensorFlow
    run = Experiment("demo").submit(TensorFlow(source_directory=".", entry_script="train.py"))
    run.wait_for_completion(show_output=True)

A bare `import tfsubmit` imports nothing: the in-job runtime (`run_context`) runs in the
job's environment, which has TensorFlow but not Prefect, and the host agent runs on SSH hosts
for every command (`python -S -m tfsubmit.targets.agent`), where each import is paid per
command and host. Every name loads on first use.
"""

from __future__ import annotations

from importlib import import_module

TYPE_CHECKING = False  # typing itself costs 3 ms per agent command

__version__ = "0.1.0"

_LAZY = {
    "RunContext": "tfsubmit.runtime",
    "run_context": "tfsubmit.runtime",
    "TensorFlow": "tfsubmit.spec.job",
    "TrainingJob": "tfsubmit.spec.job",
    "Experiment": "tfsubmit.api",
    "Run": "tfsubmit.api",
    "SweepRun": "tfsubmit.api",
    "DeploymentRun": "tfsubmit.api",
    "open_run": "tfsubmit.api",
    "TfsubmitError": "tfsubmit.errors",
    "JobSpecError": "tfsubmit.errors",
    "RunFailedError": "tfsubmit.errors",
    "Workspace": "tfsubmit.store.layout",
}

__all__ = [*_LAZY]

if TYPE_CHECKING:
    from tfsubmit.api import DeploymentRun, Experiment, Run, SweepRun, open_run  # noqa: F401
    from tfsubmit.errors import JobSpecError, RunFailedError, TfsubmitError  # noqa: F401
    from tfsubmit.runtime import RunContext, run_context  # noqa: F401
    from tfsubmit.spec.job import TensorFlow, TrainingJob  # noqa: F401
    from tfsubmit.store.layout import Workspace  # noqa: F401


def __getattr__(name: str) -> object:
    if name == "Run":
        return _run_class()
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tfsubmit' has no attribute {name!r}")


def _run_class() -> object:
    """`Run`: inside a job, the in-script run (Azure ML v1's `Run.get_context()`), which
    needs nothing but the standard library; elsewhere the submitting side's Run (which has
    the same `get_context`). A job's environment lacks tfsubmit's own dependencies, so the
    submitting side's Run may not import there."""
    import os

    from tfsubmit.runtime.context import Run as InJobRun

    if os.environ.get("TFSUBMIT_RUN_ID"):
        return InJobRun
    try:
        return import_module("tfsubmit.api").Run
    except ImportError:
        return InJobRun
