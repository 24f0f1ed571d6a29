"""Environment specs and hashing (pure), and the conda error path."""

from __future__ import annotations

from pathlib import Path

import pytest

from tfsubmit import TensorFlow
from tfsubmit.errors import EnvironmentBuildError
from tfsubmit.spec.environment import EnvironmentSpec, environment_spec, tensorflow_requirement
from tfsubmit.store.package import runtime_dir
from tfsubmit.targets.envbuild import resolve_environment

JOBS = Path(__file__).parent / "jobs"


def _job(**kw):
    return TensorFlow(source_directory=str(JOBS), entry_script="echo_args.py", **kw)


@pytest.mark.parametrize(
    ("kw", "requirement"),
    [
        ({}, "tensorflow-cpu==2.21.*"),
        ({"framework_version": "2.15"}, "tensorflow-cpu==2.15.*"),
        ({"framework_version": "2.18.1"}, "tensorflow-cpu==2.18.1"),
        ({"use_gpu": True}, "tensorflow==2.21.*"),
    ],
)
def test_tensorflow_requirement(kw, requirement):
    assert tensorflow_requirement(_job(**kw)) == requirement


def test_a_local_package_that_changed_is_another_environment(tmp_path):
    """Issue 27 (2): `name @ file:///path` (a wheel or a folder) is hashed by its content:
    the same path with other code is another environment, never the old one reused."""
    wheel = tmp_path / "pkg-0.1-py3-none-any.whl"
    folder = tmp_path / "pkg"
    (folder / "pkg").mkdir(parents=True)
    wheel.write_bytes(b"one")
    (folder / "pkg" / "__init__.py").write_text("VERSION = 1\n")
    job = _job(pip_packages=[f"pkg @ file://{wheel}", f"other @ file://{folder}"])
    first = environment_spec(job, python_version="3.11.7").hash
    assert environment_spec(job, python_version="3.11.7").hash == first  # stable
    wheel.write_bytes(b"two")
    second = environment_spec(job, python_version="3.11.7").hash
    (folder / "pkg" / "__init__.py").write_text("VERSION = 2\n")
    third = environment_spec(job, python_version="3.11.7").hash
    (folder / "pkg" / "__pycache__").mkdir()  # build leftovers are not content
    (folder / "pkg" / "__pycache__" / "x.pyc").write_bytes(b"x")
    assert len({first, second, third}) == 3
    assert environment_spec(job, python_version="3.11.7").hash == third


def test_hash_is_stable_and_tracks_every_input():
    base = environment_spec(_job(pip_packages=["a", "b"]), python_version="3.11.7")
    same = environment_spec(_job(pip_packages=["b", "a"]), python_version="3.11.7")
    assert base.hash == same.hash  # order of pip_packages does not matter
    others = [
        environment_spec(_job(pip_packages=["a"]), python_version="3.11.7"),
        environment_spec(_job(pip_packages=["a", "b"]), python_version="3.12.1"),
        environment_spec(_job(pip_packages=["a", "b"], use_gpu=True), python_version="3.11.7"),
        environment_spec(_job(pip_packages=["a", "b"], framework_version="2.20"),
                         python_version="3.11.7"),
        environment_spec(_job(pip_packages=["a", "b"], conda_packages=["cudnn"]),
                         python_version="3.11.7"),
    ]
    assert len({base.hash, *(o.hash for o in others)}) == 1 + len(others)


def test_conda_packages_without_conda_name_the_packages(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH with no conda, mamba or micromamba
    spec = EnvironmentSpec("3.11.7", ("tensorflow-cpu==2.21.*",), ("cudatoolkit", "cudnn"))
    with pytest.raises(EnvironmentBuildError, match=r"\['cudatoolkit', 'cudnn'\].*micromamba"):
        resolve_environment(spec, tmp_path / "envs")
    assert not (tmp_path / "envs" / spec.hash).exists()


def test_runtime_copy_is_keyed_by_content(tmp_path):
    first = runtime_dir(tmp_path)
    assert (first / "tfsubmit" / "runtime" / "context.py").is_file()
    assert runtime_dir(tmp_path) == first


def test_runtime_copies_made_at_once_by_threads_of_one_process_do_not_collide(tmp_path):
    """Two trials of a sweep on a Slurm target once installed it from one runner process
    into one temporary folder named after the pid: one removed the other's files."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        made = set(pool.map(lambda _: runtime_dir(tmp_path / "runtime"), range(8)))
    [runtime] = made
    assert (runtime / "tfsubmit" / "runtime" / "context.py").is_file()
    assert [p.name for p in (tmp_path / "runtime").iterdir()] == [runtime.name]
