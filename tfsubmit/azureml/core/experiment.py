"""azureml.core.Experiment and ScriptRunConfig, onto tfsubmit's Experiment and
TrainingJob."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tfsubmit.azureml._notes import not_used
from tfsubmit.errors import JobSpecError


def _target_name(target: Any) -> str:
    if target is None:
        return "local"
    return target if isinstance(target, str) else target.name


def script_params(arguments: list[Any] | None) -> tuple[dict[str, Any] | list[Any],
                                                         dict[str, str]]:
    """Azure's argument list as script_params and inputs: a dataset argument becomes an
    input (shipped with the run, its path passed as the argument before it names); flag
    and value pairs become a mapping (which a sweep merges its values into)."""
    from tfsubmit.azureml.core.dataset import DatasetConsumptionConfig

    arguments = list(arguments or [])
    inputs: dict[str, str] = {}
    rest: list[Any] = []
    for i, arg in enumerate(arguments):
        if isinstance(arg, DatasetConsumptionConfig):
            flag = arguments[i - 1] if i and isinstance(arguments[i - 1], str) \
                and arguments[i - 1].startswith("-") else None
            if flag is None:
                raise JobSpecError(f"arguments: dataset {arg.name!r} must follow its flag "
                                   "(['--data-folder', dataset.as_mount()])")
            rest.pop()  # the flag: the input passes it
            inputs[flag] = str(arg.path)
        else:
            rest.append(arg)
    flags = rest[0::2]
    if len(rest) % 2 == 0 and all(isinstance(f, str) and f.startswith("-") for f in flags) \
            and len(set(flags)) == len(flags):
        return dict(zip(rest[0::2], rest[1::2], strict=True)), inputs
    return [str(a) for a in rest], inputs


class ScriptRunConfig:
    """What to run and where: `ScriptRunConfig(source_directory, script, arguments,
    compute_target, environment, distributed_job_config)`."""

    def __init__(self, source_directory: str | Path = ".", script: str | None = None,
                 arguments: list[Any] | None = None, run_config: Any = None,
                 compute_target: Any = None, environment: Any = None,
                 distributed_job_config: Any = None, max_run_duration_seconds: int | None = None,
                 node_count: int | None = None, command: Any = None, **ignored: Any) -> None:
        if script is None:
            raise JobSpecError("ScriptRunConfig: script is required (the training script, "
                               "relative to source_directory); `command` is not supported")
        if run_config is not None:
            environment = environment or run_config.environment
            compute_target = compute_target or run_config.target
            node_count = node_count or run_config.node_count
        self.source_directory = str(source_directory)
        self.script = script
        self.arguments = list(arguments or [])
        self.compute_target = compute_target
        self.environment = environment
        self.distributed_job_config = distributed_job_config
        self.max_run_duration_seconds = max_run_duration_seconds
        self.node_count = node_count

    def to_job(self):
        """The tfsubmit job it describes."""
        from tfsubmit.spec.job import TensorFlow

        params, inputs = script_params(self.arguments)
        fields: dict[str, Any] = {"source_directory": self.source_directory,
                                  "entry_script": self.script,
                                  "script_params": params or None,
                                  "compute_target": _target_name(self.compute_target)}
        if inputs:
            fields["inputs"] = inputs
        if self.environment is not None:
            fields.update(self.environment.job_fields())
        if self.distributed_job_config is not None:
            fields.update(self.distributed_job_config.job_fields())
        if self.node_count and "node_count" not in fields:
            fields["node_count"] = self.node_count
        if self.max_run_duration_seconds:
            fields["max_run_duration_seconds"] = self.max_run_duration_seconds
        return TensorFlow(**{k: v for k, v in fields.items() if v is not None})


class Experiment:
    """`Experiment(workspace, name)`: submit configs, list runs."""

    def __init__(self, workspace: Any, name: str, **ignored: Any) -> None:
        from tfsubmit.api.experiment import Experiment as _Experiment

        self.workspace = workspace
        self.name = name
        self._experiment = _Experiment(name, workspace=workspace.root)

    def __repr__(self) -> str:
        return f"Experiment(Name: {self.name}, Workspace: {self.workspace.name})"

    def submit(self, config: Any, tags: dict[str, str] | None = None, **ignored: Any):
        """Run a ScriptRunConfig, an estimator (TensorFlow) or a HyperDriveConfig; returns
        its Run (a HyperDriveRun for HyperDrive)."""
        from tfsubmit.azureml.core._runs import AzureRun, HyperDriveRun
        from tfsubmit.azureml.train.hyperdrive import HyperDriveConfig
        from tfsubmit.spec.job import TrainingJob

        if isinstance(config, HyperDriveConfig):
            submitted = self._experiment.submit(config.to_sweep())
            run = HyperDriveRun(self, submitted.id, config)
        else:
            if isinstance(config, ScriptRunConfig):
                job = config.to_job()
            elif isinstance(config, TrainingJob):
                job = config
            else:
                raise JobSpecError(f"Experiment.submit: {type(config).__name__} is not a "
                                   "ScriptRunConfig, a TensorFlow estimator or a "
                                   "HyperDriveConfig")
            run = AzureRun(self, self._experiment.submit(job).id)
        if tags:
            run.set_tags(tags)
        return run

    def get_runs(self, type: str | None = None, tags: Any = None, properties: Any = None,
                 include_children: bool = False):
        """The experiment's runs, newest first (a sweep's trials with include_children)."""
        from tfsubmit.azureml.core._runs import submitted_run

        if type or properties:
            not_used("get_runs' type and properties filters", "every run is listed")
        for record in self.workspace._ws.list_runs(self.name):
            if record.get("parent") and not include_children:
                continue
            run = submitted_run(self, record["id"])
            if tags and not _has_tags(run, tags):
                continue
            yield run


def _has_tags(run: Any, tags: Any) -> bool:
    own = run.get_tags()
    if isinstance(tags, str):
        return tags in own
    return all(own.get(k) == v for k, v in dict(tags).items())
