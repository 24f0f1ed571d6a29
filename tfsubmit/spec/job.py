"""The job spec: plain validated data describing one training job.

`TensorFlow(...)` takes the same keyword names as a cloud ML SDK's TensorFlow estimator.
Every bad value raises `JobSpecError` naming the field at fault.
"""

from __future__ import annotations

import difflib
import errno
import math
import os
import re
import stat
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from packaging.requirements import InvalidRequirement, Requirement
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from tfsubmit.errors import JobSpecError
from tfsubmit.spec.yamlfile import load_mapping

DistributedBackend = Literal["mpi", "ps", "multiworker"]
BACKENDS: tuple[str, ...] = ("mpi", "ps", "multiworker")

DEFAULT_FRAMEWORK_VERSION = "2.21"
# Horovod 0.28.1 (its last release) builds against TensorFlow <= 2.18; with 2.15 (Keras 2
# built in) it needs no workaround, so that is the default of mpi jobs.
MPI_FRAMEWORK_VERSION = "2.15"
NEWEST_HOROVOD_FRAMEWORK = (2, 18)
# tensorflow-cpu wheels for CPython 3.11 exist from 2.12 on; 2.21 is the newest release.
OLDEST_FRAMEWORK = (2, 12)
NEWEST_FRAMEWORK = (2, 21)

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RESERVED_ENV_PREFIXES = ("TFSUBMIT_",)
_RESERVED_ENV = {"TF_CONFIG", "PYTHONPATH"}
_EXPERIMENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

# TensorFlow tasks (ps, multiworker) get ports from a block of this many per job.
TF_PORTS_PER_JOB = 50
MAX_PROCESSES_PER_NODE = 256
MAX_NODES = 1024
# The folder of the job's working directory that holds its shipped `inputs`.
INPUTS_DIR = ".inputs"

ScriptParamValue = str | int | float | bool | None | list[str | int | float]


def duration_problem(value: Any) -> str | None:
    """Why `value` is not a positive, finite number of seconds; None when it is (the rule
    of every duration field, a job's and a sweep's)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"must be a number of seconds (got {value!r})"
    if not math.isfinite(value) or value <= 0:
        return f"must be a positive, finite number of seconds (got {value!r})"
    return None


class TrainingJob(BaseModel):
    """One TensorFlow training job, validated on construction."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source_directory: str = Field(description="Folder holding the training code; snapshotted.")
    entry_script: str = Field(description="Script to run, relative to source_directory.")
    script_params: dict[str, ScriptParamValue] | list[str] = Field(
        default_factory=dict,
        description="Arguments for the script: {'--epochs': 3} or a list of strings.",
    )
    compute_target: str = Field(default="local", description="Name of the compute target.")
    pip_packages: list[str] = Field(default_factory=list, description="Extra pip requirements.")
    conda_packages: list[str] = Field(
        default_factory=list, description="Conda packages; needs conda, mamba or micromamba."
    )
    pip_requirements_file: str | None = Field(
        default=None,
        description="A requirements.txt (relative to source_directory, or absolute) whose "
        "requirements join pip_packages at submit.",
    )
    conda_dependencies_file: str | None = Field(
        default=None,
        description="A conda environment YAML (relative to source_directory, or absolute): "
        "its `dependencies` join conda_packages, its `pip:` list joins pip_packages.",
    )
    hyperparameters: dict[str, ScriptParamValue] = Field(
        default_factory=dict,
        description="SageMaker's name: each {name: value} becomes `--name value` after "
        "script_params.",
    )
    inputs: dict[str, str] = Field(
        default_factory=dict,
        description="Local files or folders shipped with the run, each passed to the script "
        "as an argument: {'--data-folder': '~/data/mnist'} gives `--data-folder "
        ".inputs/data-folder` (a path relative to the script's working folder).",
    )
    use_gpu: bool = Field(default=False, description="Install `tensorflow` (GPU) instead of CPU.")
    custom_docker_image: str | None = Field(
        default=None, description="Docker targets: build the job's image on this one."
    )
    framework_version: str = Field(
        default=DEFAULT_FRAMEWORK_VERSION,
        description="TensorFlow version, e.g. '2.21' (default 2.21; 2.15 for mpi jobs).",
    )
    environment_variables: dict[str, str] = Field(
        default_factory=dict, description="Extra variables set for every process of the job."
    )
    secret_environment_variables: dict[str, SecretStr | None] = Field(
        default_factory=dict,
        description="Variables with secret values (tokens, passwords), set for the job's "
        "processes only: job.json, Prefect, logs and artifacts hold their names, never their "
        "values.",
    )
    max_run_duration_seconds: float | None = Field(
        default=None, description="Stop the job (status Failed) after this many seconds."
    )
    max_restarts: int = Field(
        default=0, description="Restarts allowed after failures (per job, all tasks together)."
    )
    permanent_exit_codes: list[int] = Field(
        default_factory=list, description="Exit codes that are never retried."
    )
    hang_timeout_seconds: float | None = Field(
        default=None,
        description="Treat the job as hung after this long with no line or metric, counted "
        "from its first progress (a metric, or a line that is not library start-up noise).",
    )
    startup_timeout_seconds: float | None = Field(
        default=None,
        description="Fail (or restart) a job that shows no progress this long after it "
        "started; default with hang_timeout_seconds: max(600, 10 x hang_timeout_seconds).",
    )
    silence_notice_seconds: float = Field(
        default=180.0,
        description="Say in the run's log when a task whose exit decides the job (the chief, "
        "or the workers of a job without one; never a ps) has printed nothing this long while "
        "others ended or went on (it may wait for something that never comes), "
        "and, for a ps job without a chief, when no task ended and no metric came this long.",
    )
    node_count: int = Field(default=1, description="Number of nodes.")
    process_count_per_node: int = Field(default=1, description="Processes on each node.")
    distributed_backend: DistributedBackend | None = Field(
        default=None, description="'mpi' (Horovod), 'ps' (parameter servers) or 'multiworker'."
    )
    worker_count: int = Field(default=1, description="Workers, for distributed_backend='ps'.")
    parameter_server_count: int = Field(
        default=0, description="Parameter servers, for distributed_backend='ps'."
    )
    chief: bool = Field(
        default=False,
        description="distributed_backend='ps': also run a chief, TF2's coordinator "
        "(ParameterServerStrategy + ClusterCoordinator); the job is then done when the chief "
        "is. Default, as Azure ML v1: TF_CONFIG holds `ps` and `worker` only, worker 0 is the "
        "chief, and the job is done when every worker exits 0.",
    )

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise JobSpecError(_describe(exc, data)) from None

    # -- field checks -------------------------------------------------------------------------

    @model_validator(mode="before")
    @classmethod
    def _mpi_framework_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("distributed_backend") == "mpi" \
                and data.get("framework_version") is None:
            return {**data, "framework_version": MPI_FRAMEWORK_VERSION}
        return data

    @model_validator(mode="before")
    @classmethod
    def _dependency_files(cls, data: Any) -> Any:
        """Requirements and conda files are read at submit: their entries join pip_packages
        and conda_packages (the job carries them from then on, not the file's name)."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for field, read in (("pip_requirements_file", _read_requirements),
                            ("conda_dependencies_file", _read_conda_file)):
            name = data.get(field)
            if name is None:
                continue
            if not isinstance(name, str) or not name.strip():
                raise JobSpecError(f"{field}: must be a file name (got {name!r})")
            path = _beside_source(data.get("source_directory"), name)
            if not path.is_file():
                raise JobSpecError(f"{field}: {name!r} is not a file (looked for {path})")
            pip, conda = read(path, field)
            for key, extra in (("pip_packages", pip), ("conda_packages", conda)):
                have = list(data.get(key) or [])
                if not isinstance(have, list):
                    continue  # the field's own check names it
                data[key] = have + [item for item in extra if item not in have]
            data[field] = None
        return data

    @model_validator(mode="before")
    @classmethod
    def _no_nul_bytes(cls, data: Any) -> Any:
        """A NUL byte cannot pass through argv, the environment or a file name."""
        if isinstance(data, dict):
            for field, value in data.items():
                if _holds_nul(value):
                    raise JobSpecError(f"{field}: holds a NUL byte (\\x00), which no "
                                       f"argument, variable or file name can carry")
        return data

    @field_validator("source_directory")
    @classmethod
    def _source_exists(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("is empty; give the folder holding the training code")
        try:
            path = Path(value).expanduser()
            if not path.is_dir():
                raise ValueError(
                    f"folder {value!r} does not exist (resolved to {path.absolute()})")
            return str(path.resolve())
        except RuntimeError:  # '~nosuchuser/x'
            raise ValueError(f"{value!r} names the home folder of an unknown user") from None
        except OSError as exc:  # a name longer than the OS allows, a folder we cannot read
            raise ValueError(f"{value!r} cannot be used: {exc.strerror or exc}") from None

    @field_validator("entry_script")
    @classmethod
    def _entry_is_relative(cls, value: str) -> str:
        posix = PurePosixPath(value.replace("\\", "/"))
        if not value or posix.is_absolute() or ".." in posix.parts:
            raise ValueError(
                f"{value!r} must be a path inside source_directory, like 'train.py'"
            )
        return str(posix)

    @field_validator("compute_target")
    @classmethod
    def _target_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", value):
            raise ValueError(f"{value!r} is not a target name (1-64 letters, digits, '_', "
                             f"'.', '-')")
        return value

    @field_validator("pip_packages")
    @classmethod
    def _pip_requirements(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                Requirement(item)
            except InvalidRequirement as exc:
                raise ValueError(f"{item!r} is not a pip requirement: {exc}") from None
        return value

    @field_validator("inputs")
    @classmethod
    def _inputs_exist(cls, value: dict[str, str]) -> dict[str, str]:
        resolved = {}
        slugs: dict[str, str] = {}
        for name, where in value.items():
            slug = _input_slug(name)
            if not slug:
                raise ValueError(f"{name!r} is not an argument name like '--data-folder'")
            if slug in slugs:
                raise ValueError(f"{name!r} and {slugs[slug]!r} would share the folder "
                                 f".inputs/{slug}; rename one")
            slugs[slug] = name
            resolved[name] = str(_input_checked(name, where))
        return resolved

    @field_validator("framework_version")
    @classmethod
    def _framework_known(cls, value: str) -> str:
        match = re.fullmatch(r"(\d+)\.(\d+)(?:\.(\d+))?", value.strip())
        oldest = ".".join(map(str, OLDEST_FRAMEWORK))
        newest = ".".join(map(str, NEWEST_FRAMEWORK))
        if not match:
            raise ValueError(f"{value!r} is not a version like '{newest}' or '{newest}.0'")
        if not OLDEST_FRAMEWORK <= (int(match[1]), int(match[2])) <= NEWEST_FRAMEWORK:
            raise ValueError(
                f"TensorFlow {value} is not available for this Python; use {oldest} .. {newest}"
            )
        return value.strip()

    @field_serializer("secret_environment_variables")
    def _names_only(self, value: dict[str, SecretStr | None]) -> dict[str, None]:
        """Written anywhere (job.json, Prefect parameters), a secret is its name alone."""
        return dict.fromkeys(value)

    @field_validator("environment_variables", "secret_environment_variables")
    @classmethod
    def _env_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if not _ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid variable name")
            if name in _RESERVED_ENV or name.startswith(_RESERVED_ENV_PREFIXES):
                raise ValueError(f"{name!r} is set by tfsubmit itself and cannot be overridden")
        return value

    @field_validator("max_run_duration_seconds", "hang_timeout_seconds",
                     "startup_timeout_seconds", "silence_notice_seconds", mode="before")
    @classmethod
    def _positive_duration(cls, value: Any) -> Any:
        problem = value is not None and duration_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("node_count", "process_count_per_node", "worker_count",
                     "parameter_server_count", "max_restarts", mode="before")
    @classmethod
    def _whole_number(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be a whole number (got {value!r})")
        return value

    @field_validator("node_count", "worker_count")
    @classmethod
    def _at_least_one(cls, value: int) -> int:
        if not 1 <= value <= MAX_NODES:
            raise ValueError(f"must be 1 .. {MAX_NODES} (got {value})")
        return value

    @field_validator("process_count_per_node")
    @classmethod
    def _processes_per_node(cls, value: int) -> int:
        if not 1 <= value <= MAX_PROCESSES_PER_NODE:
            raise ValueError(f"must be 1 .. {MAX_PROCESSES_PER_NODE} (got {value})")
        return value

    @field_validator("parameter_server_count", "max_restarts")
    @classmethod
    def _not_negative(cls, value: int) -> int:
        if not 0 <= value <= 1000:
            raise ValueError(f"must be 0 .. 1000 (got {value})")
        return value

    @model_validator(mode="after")
    def _hyperparameters_apart(self) -> TrainingJob:
        given = set(self.script_params) if isinstance(self.script_params, dict) \
            else {item for item in self.script_params if item.startswith("-")}
        for name in self.hyperparameters:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
                raise JobSpecError(f"hyperparameters: {name!r} is not a name like "
                                   "'learning-rate' (it becomes --learning-rate)")
            if f"--{name}" in given:
                raise JobSpecError(f"hyperparameters: --{name} is also in script_params; "
                                   "give it once")
        for name in self.inputs:
            if name in given or name.lstrip("-") in self.hyperparameters:
                raise JobSpecError(f"inputs: {name} is also in script_params or "
                                   "hyperparameters; give it once")
        return self

    @model_validator(mode="after")
    def _arguments_fit_a_command_line(self) -> TrainingJob:
        """What Linux refuses to exec (E2BIG) is refused here, by name, before anything
        runs: one argument over 128 KiB, or all of them with the environment over ARG_MAX
        (a quarter of the stack limit: 2 MiB by default), keeping 25% for the rest of the
        environment a process gets."""
        argv = self.script_arguments()
        for i, arg in enumerate(argv):
            if _size(arg) >= MAX_ARG_BYTES:
                raise JobSpecError(
                    f"script_params: argument {i + 1} is {_size(arg):,} bytes, more than "
                    f"the {MAX_ARG_BYTES:,} one argument may be on Linux; pass it in a file "
                    "(inputs) instead")
        total = sum(_size(text) + 1 for text in
                    [*argv, *(f"{k}={v}" for k, v in self.environment_variables.items())])
        limit = int(_arg_max() * 0.75)
        if total > limit:
            raise JobSpecError(
                f"script_params: the arguments and environment_variables come to {total:,} "
                f"bytes, more than the {limit:,} a command line may hold here (ARG_MAX "
                f"{_arg_max():,}, less room for the environment); pass them in a file "
                "(inputs) instead")
        return self

    @model_validator(mode="after")
    def _secrets_apart(self) -> TrainingJob:
        both = set(self.environment_variables) & set(self.secret_environment_variables)
        if both:
            raise JobSpecError(f"secret_environment_variables: {', '.join(sorted(both))} also "
                               f"in environment_variables; name each variable once")
        return self

    @model_validator(mode="after")
    def _entry_exists_and_topology(self) -> TrainingJob:
        script = Path(self.source_directory) / self.entry_script
        if not script.is_file():
            raise JobSpecError(
                f"entry_script: {self.entry_script!r} is not a file in source_directory "
                f"{self.source_directory}"
            )
        if self.distributed_backend == "mpi" and self.framework_minor > NEWEST_HOROVOD_FRAMEWORK:
            newest = ".".join(map(str, NEWEST_HOROVOD_FRAMEWORK))
            raise JobSpecError(
                f"framework_version: Horovod (distributed_backend='mpi') builds against "
                f"TensorFlow 2.12 .. {newest}, not {self.framework_version}; use "
                f"{MPI_FRAMEWORK_VERSION} (the default for mpi jobs, Keras 2 built in) or "
                f"2.16 .. {newest} (with legacy Keras)"
            )
        many = self.node_count > 1 or self.process_count_per_node > 1
        if many and self.distributed_backend is None:
            raise JobSpecError(
                f"distributed_backend: node_count={self.node_count} and "
                f"process_count_per_node={self.process_count_per_node} need a "
                f"distributed_backend, one of {', '.join(BACKENDS)}"
            )
        if self.distributed_backend != "ps":
            if self.parameter_server_count:
                raise JobSpecError(
                    "parameter_server_count: only used with distributed_backend='ps' "
                    f"(backend is {self.distributed_backend!r})"
                )
            if self.worker_count != 1:
                raise JobSpecError(
                    "worker_count: only used with distributed_backend='ps' "
                    f"(backend is {self.distributed_backend!r}); use node_count and "
                    "process_count_per_node"
                )
        if self.distributed_backend != "ps" and self.chief:
            raise JobSpecError(
                f"chief: only used with distributed_backend='ps' "
                f"(backend is {self.distributed_backend!r})"
            )
        if self.distributed_backend == "ps" and self.parameter_server_count < 1:
            raise JobSpecError(
                "parameter_server_count: distributed_backend='ps' needs at least 1 "
                "parameter server"
            )
        if self.tf_task_count > TF_PORTS_PER_JOB:
            fields = ("worker_count, parameter_server_count"
                      if self.distributed_backend == "ps"
                      else "node_count x process_count_per_node")
            raise JobSpecError(
                f"{fields}: {self.tf_task_count} TensorFlow tasks, but a job has ports for "
                f"at most {TF_PORTS_PER_JOB}; use fewer tasks, or distributed_backend='mpi'"
            )
        return self

    # -- derived views ------------------------------------------------------------------------

    @property
    def framework_minor(self) -> tuple[int, int]:
        major, minor = self.framework_version.split(".")[:2]
        return int(major), int(minor)

    def secret_values(self) -> dict[str, str]:
        """The secret variables whose values this process holds."""
        return {name: value.get_secret_value()
                for name, value in self.secret_environment_variables.items() if value is not None}

    @property
    def missing_secrets(self) -> list[str]:
        """Secret variables known by name only (read back from job.json, say)."""
        return [name for name, value in self.secret_environment_variables.items()
                if value is None]

    def with_secrets(self, values: dict[str, str]) -> TrainingJob:
        """The job with the values of its named secrets filled in from `values`."""
        filled = {name: SecretStr(values[name]) if value is None and name in values else value
                  for name, value in self.secret_environment_variables.items()}
        return self.model_copy(update={"secret_environment_variables": filled})

    @property
    def tf_task_count(self) -> int:
        """TensorFlow servers of the job (each needs a port); 0 for single and mpi jobs."""
        if self.distributed_backend == "ps":
            return int(self.chief) + self.worker_count + self.parameter_server_count
        if self.distributed_backend == "multiworker":
            return self.node_count * self.process_count_per_node
        return 0

    @property
    def startup_limit(self) -> float | None:
        """Seconds a job may take to show its first progress (None: no limit of its own)."""
        if self.startup_timeout_seconds is not None:
            return self.startup_timeout_seconds
        if self.hang_timeout_seconds is not None:
            return max(600.0, 10 * self.hang_timeout_seconds)
        return None

    @property
    def legacy_keras(self) -> bool:
        """Horovod on TensorFlow 2.16+ needs Keras 2 (tf-keras): under Keras 3 its
        DistributedOptimizer silently stops averaging."""
        return self.distributed_backend == "mpi" and self.framework_minor >= (2, 16)

    @property
    def is_distributed(self) -> bool:
        return self.distributed_backend is not None

    @property
    def topology(self) -> str:
        """The processes in words, e.g. 'ps: 1 chief, 2 workers, 1 parameter server'."""
        backend = self.distributed_backend
        if backend is None:
            return "single process"
        if backend == "ps":
            chief = "1 chief, " if self.chief else ""
            return (f"ps: {chief}{self.worker_count} worker(s), {self.parameter_server_count} "
                    f"parameter server(s) on {self.node_count} node(s)")
        if backend == "multiworker":
            workers = self.node_count * self.process_count_per_node
            return f"multiworker: {workers} worker(s) on {self.node_count} node(s)"
        return (f"mpi (Horovod): {self.node_count} node(s) x {self.process_count_per_node} "
                f"rank(s)")

    def script_arguments(self) -> list[str]:
        """The script's argv after the script name, every value a separate string:
        script_params, then hyperparameters (`--name value`), then inputs (`--name PATH`)."""
        argv = _arguments(self.script_params) if isinstance(self.script_params, dict) \
            else [str(item) for item in self.script_params]
        argv += _arguments({f"--{name}": value for name, value in self.hyperparameters.items()})
        for name, where in self.inputs.items():
            argv += [name, self.input_path(name, where)]
        return argv

    @staticmethod
    def input_path(name: str, where: str) -> str:
        """Where input `name` is in the job's working folder (relative to it)."""
        folder = f"{INPUTS_DIR}/{_input_slug(name)}"
        return folder if Path(where).is_dir() else f"{folder}/{Path(where).name}"

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, base_dir: Path | None = None) -> TrainingJob:
        """Build a job from plain data; a relative source_directory is taken from base_dir."""
        data = dict(data)
        source = data.get("source_directory")
        if base_dir is not None and isinstance(source, str) and source.strip():
            try:
                data["source_directory"] = str(base_dir / Path(source).expanduser())
            except RuntimeError:  # '~nosuchuser/x': the field check names it
                pass
        return cls(**data)


TensorFlow = TrainingJob
"""The estimator-style name users know: `TensorFlow(source_directory=..., entry_script=...)`."""


def _arguments(params: dict[str, Any]) -> list[str]:
    """{'--epochs': 3, '--fast': True, '--skip': False} -> ['--epochs', '3', '--fast']."""
    argv: list[str] = []
    for key, value in params.items():
        if value is None or value is False:
            continue
        if value is True:
            argv.append(key)
        elif isinstance(value, list):
            argv += [key, *(str(item) for item in value)]
        else:
            argv += [key, str(value)]
    return argv


# Linux's limit on one argument of exec (MAX_ARG_STRLEN: 32 pages).
MAX_ARG_BYTES = 32 * 4096


def _size(text: str) -> int:
    """Bytes of `text` on a command line (any lone surrogate counted, as a file name's)."""
    return len(text.encode("utf-8", "surrogatepass"))


def _arg_max() -> int:
    try:
        return os.sysconf("SC_ARG_MAX")
    except (ValueError, OSError):
        return 2 * 1024 * 1024


def _input_checked(name: str, where: str) -> Path:
    """The input's real path, or an error naming it and what is wrong with it."""
    try:
        path = Path(where).expanduser().resolve(strict=True)
        info = path.stat()
    except FileNotFoundError:
        raise ValueError(f"{name}: {where!r} does not exist; give a local file or folder to "
                         "ship with the run") from None
    except (RuntimeError, OSError) as exc:  # RuntimeError: Python's word for a symlink loop
        loop = isinstance(exc, RuntimeError) or getattr(exc, "errno", None) == errno.ELOOP
        raise ValueError(f"{name}: {where!r} " + ("is a symbolic link loop; point it at a "
                         "file or folder" if loop else
                         f"cannot be reached: {getattr(exc, 'strerror', None) or exc}")) \
            from None
    if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
        raise ValueError(f"{name}: {where!r} is not a file or folder (a pipe, a device or a "
                         "socket); give a local file or folder to ship with the run")
    wanted = os.R_OK | (os.X_OK if stat.S_ISDIR(info.st_mode) else 0)
    if not os.access(path, wanted):
        raise ValueError(f"{name}: {where!r} cannot be read (permission denied); make it "
                         "readable by this user")
    return path


def _input_slug(name: str) -> str:
    """'--data-folder' -> 'data-folder': the input's folder under .inputs/."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name.lstrip("-")).strip("._")


def _beside_source(source: Any, name: str) -> Path:
    path = Path(name).expanduser()
    if path.is_absolute() or not isinstance(source, str):
        return path
    return Path(source).expanduser() / path


def _read_requirements(path: Path, field: str) -> tuple[list[str], list[str]]:
    """A requirements.txt's requirements (comments and blank lines skipped)."""
    pip = []
    for number, raw in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        line = raw.split(" #")[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            raise JobSpecError(f"{field}: {path} line {number}: pip options ({line.split()[0]})"
                               " are not supported; list plain requirements")
        try:
            Requirement(line)
        except InvalidRequirement as exc:
            raise JobSpecError(f"{field}: {path} line {number}: {line!r} is not a pip "
                               f"requirement: {exc}") from None
        pip.append(line)
    return pip, []


def _read_conda_file(path: Path, field: str) -> tuple[list[str], list[str]]:
    """A conda environment YAML's dependencies (conda's, and its `pip:` list). Python
    itself is the job environment's own, so a `python` entry is left out."""
    data = load_mapping(path, field, JobSpecError)
    dependencies = data.get("dependencies") or []
    if not isinstance(dependencies, list):
        raise JobSpecError(f"{field}: {path}: `dependencies` must be a list")
    pip: list[str] = []
    conda: list[str] = []
    for item in dependencies:
        if isinstance(item, dict) and isinstance(item.get("pip"), list):
            pip += [str(p) for p in item["pip"]]
        elif isinstance(item, str) and item.strip():
            if re.split(r"[=<>! ]", item.strip())[0] not in ("python", "pip"):
                conda.append(item.strip())
        else:
            raise JobSpecError(f"{field}: {path}: dependency {item!r} is neither a conda "
                               "package nor a `pip:` list")
    return pip, conda


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\0" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_holds_nul(item) for item in value)
    return False


def validate_experiment_name(name: str) -> str:
    if not isinstance(name, str) or not _EXPERIMENT_NAME.fullmatch(name):
        raise JobSpecError(
            f"experiment: {name!r} is not a valid name (1-64 letters, digits, '_', '.', '-')"
        )
    return name


def read_spec_file(path: Path, what: str) -> tuple[dict[str, Any], str | None]:
    """A job or sweep YAML file's fields, and its optional (validated) `experiment`."""
    data = load_mapping(path, what, JobSpecError)
    experiment = data.pop("experiment", None)
    if experiment is not None:
        validate_experiment_name(experiment)
    return data, experiment


def load_job_file(path: str | Path) -> tuple[TrainingJob, str | None]:
    """Read a job YAML file; returns the job and its optional `experiment` name."""
    path = Path(path)
    data, experiment = read_spec_file(path, "job")
    try:
        job = TrainingJob.from_dict(data, base_dir=path.resolve().parent)
    except JobSpecError as exc:
        raise JobSpecError(f"{path}: {exc}") from None
    return job, experiment


def _describe(exc: ValidationError, data: dict[str, Any]) -> str:
    """Turn pydantic's report into lines that each start with the field at fault."""
    lines = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "job"
        if error["type"] == "extra_forbidden":
            known = list(TrainingJob.model_fields)
            close = difflib.get_close_matches(str(error["loc"][0]), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            lines.append(f"{field}: unknown field{hint}")
            continue
        if error["type"] == "missing":
            lines.append(f"{field}: required field is missing")
            continue
        message = error["msg"].removeprefix("Value error, ")
        ctx = error.get("ctx", {})
        if isinstance(ctx.get("error"), JobSpecError):
            lines.append(message)
            continue
        value = error.get("input")
        shown = f" (got {value!r})" if field in data and error["type"] != "value_error" else ""
        lines.append(f"{field}: {message}{shown}")
    return "; ".join(lines)
