"""Pure tests of the job spec: defaults, argv building, and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tfsubmit import TensorFlow
from tfsubmit.errors import JobSpecError
from tfsubmit.spec.job import load_job_file, validate_experiment_name


@pytest.fixture
def src(tmp_path) -> Path:
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "train.py").write_text("print('hi')\n")
    return folder


def test_defaults(src):
    job = TensorFlow(source_directory=str(src), entry_script="train.py")
    assert job.compute_target == "local"
    assert job.framework_version == "2.21"
    assert (job.node_count, job.process_count_per_node, job.distributed_backend) == (1, 1, None)
    assert job.script_arguments() == []
    assert not job.is_distributed


def test_script_arguments_keep_order_and_types(src):
    job = TensorFlow(
        source_directory=str(src),
        entry_script="train.py",
        script_params={"--epochs": 3, "--lr": 0.01, "--flag": True, "--off": False,
                       "--none": None, "--sizes": [1, 2], "--name": "; touch /tmp/x"},
    )
    assert job.script_arguments() == [
        "--epochs", "3", "--lr", "0.01", "--flag", "--sizes", "1", "2",
        "--name", "; touch /tmp/x",
    ]


@given(st.dictionaries(st.from_regex(r"--[a-z]{1,8}", fullmatch=True),
                       st.integers() | st.text(st.characters(blacklist_characters="\0"),
                                               min_size=1), max_size=8))
def test_every_param_becomes_one_flag_and_one_literal_value(params):
    job = TensorFlow(source_directory=str(Path(__file__).parent / "jobs"),
                     entry_script="echo_args.py", script_params=params)
    argv = job.script_arguments()
    assert argv[0::2] == list(params)
    assert argv[1::2] == [str(v) for v in params.values()]


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"distributed_backend": "horovod"}, "distributed_backend", "'mpi', 'ps' or 'multiworker'"),
        ({"node_count": -1}, "node_count", "1 .. 1024"),
        ({"process_count_per_node": 0}, "process_count_per_node", "1 .. 256"),
        ({"parameter_server_count": -2}, "parameter_server_count", "0 .. 1000"),
        ({"source_directory": "/no/such/dir"}, "source_directory", "does not exist"),
        ({"entry_script": "missing.py"}, "entry_script", "not a file"),
        ({"entry_script": "../train.py"}, "entry_script", "inside source_directory"),
        ({"entry_script": "/etc/passwd"}, "entry_script", "inside source_directory"),
        ({"framework_version": "1.15"}, "framework_version", "2.12 .. 2.21"),
        ({"framework_version": "latest"}, "framework_version", "not a version"),
        ({"pip_packages": ["numpy>>1"]}, "pip_packages", "not a pip requirement"),
        ({"environment_variables": {"TF_CONFIG": "{}"}}, "environment_variables",
         "set by tfsubmit"),
        ({"environment_variables": {"1BAD": "x"}}, "environment_variables", "not a valid"),
        ({"max_run_duration_seconds": 0}, "max_run_duration_seconds", "positive"),
        ({"node_count": 2}, "distributed_backend", "need a distributed_backend"),
        ({"distributed_backend": "ps"}, "parameter_server_count", "at least 1"),
        ({"worker_count": 3}, "worker_count", "only used with distributed_backend='ps'"),
        ({"compute_target": "bad name!"}, "compute_target", "not a target name"),
        ({"chief": True}, "chief", "only used with distributed_backend='ps'"),
        ({"distributed_backend": "mpi", "framework_version": "2.21"}, "framework_version",
         "Horovod (distributed_backend='mpi') builds against TensorFlow 2.12 .. 2.18"),
        ({"max_restarts": -1}, "max_restarts", "0 .. 1000"),
        ({"hang_timeout_seconds": -5}, "hang_timeout_seconds", "positive"),
        ({"epochs": 3}, "epochs", "unknown field"),
        ({"scrip_params": {}}, "scrip_params", "did you mean 'script_params'"),
    ],
)
def test_bad_values_name_the_field(src, changes, field, words):
    spec = {"source_directory": str(src), "entry_script": "train.py", **changes}
    with pytest.raises(JobSpecError) as info:
        TensorFlow(**spec)
    message = str(info.value)
    assert message.startswith(f"{field}:") or f"; {field}:" in message, message
    assert words in message


def test_missing_required_fields_are_named():
    with pytest.raises(JobSpecError, match="source_directory: required field is missing"):
        TensorFlow(entry_script="train.py")


def test_mpi_jobs_default_to_tensorflow_2_15(src):
    job = TensorFlow(source_directory=str(src), entry_script="train.py",
                     distributed_backend="mpi", process_count_per_node=2)
    assert job.framework_version == "2.15" and not job.legacy_keras
    newer = job.model_copy(update={"framework_version": "2.18"})
    assert newer.legacy_keras


def test_distributed_values_are_accepted_when_consistent(src):
    job = TensorFlow(source_directory=str(src), entry_script="train.py", node_count=2,
                     distributed_backend="ps", worker_count=2, parameter_server_count=1)
    assert job.is_distributed


def test_job_yaml_resolves_source_relative_to_the_file(tmp_path, src):
    path = tmp_path / "jobs" / "job.yaml"
    path.parent.mkdir()
    path.write_text(f"experiment: exp1\nsource_directory: ../{src.name}\nentry_script: train.py\n"
                    "script_params: {--epochs: 2}\n")
    job, experiment = load_job_file(path)
    assert experiment == "exp1"
    assert job.source_directory == str(src.resolve())
    assert job.script_arguments() == ["--epochs", "2"]


def test_job_yaml_errors_name_the_file_and_field(tmp_path, src):
    path = tmp_path / "job.yaml"
    path.write_text(f"source_directory: {src}\nentry_script: train.py\nnode_count: -3\n")
    with pytest.raises(JobSpecError, match=r"job.yaml: node_count: must be 1 .. 1024"):
        load_job_file(path)
    path.write_text("- not a mapping\n")
    with pytest.raises(JobSpecError, match="must hold a mapping"):
        load_job_file(path)
    with pytest.raises(JobSpecError, match="does not exist"):
        load_job_file(tmp_path / "nope.yaml")


@pytest.mark.parametrize("name", ["", "has space", "x" * 65, "-lead"])
def test_bad_experiment_names(name):
    with pytest.raises(JobSpecError, match="experiment:"):
        validate_experiment_name(name)


def test_topology_in_words(src):
    def topology(**fields) -> str:
        return TensorFlow(source_directory=str(src), entry_script="train.py", **fields).topology

    assert topology() == "single process"
    assert topology(distributed_backend="ps", worker_count=2, parameter_server_count=1,
                    chief=True) == "ps: 1 chief, 2 worker(s), 1 parameter server(s) on 1 node(s)"
    assert topology(distributed_backend="ps", worker_count=2, parameter_server_count=1) == \
        "ps: 2 worker(s), 1 parameter server(s) on 1 node(s)"
    assert topology(distributed_backend="multiworker", node_count=2, process_count_per_node=2) \
        == "multiworker: 4 worker(s) on 2 node(s)"
    assert topology(distributed_backend="mpi", node_count=2, process_count_per_node=3) == \
        "mpi (Horovod): 2 node(s) x 3 rank(s)"
