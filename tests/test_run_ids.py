"""A run id names one folder of the workspace's runs/, and nothing else: ids that would reach
outside it ('../..', absolute paths) or match anything ('') are refused before any file is
read, written or any process signalled."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tfsubmit.errors import TfsubmitError
from tfsubmit.store.layout import Workspace
from tfsubmit.system.processes import pid_alive

BAD = ["", "../../outside", "/tmp", ".hidden", "a/b", "a\nb", "run\n"]


@pytest.mark.parametrize("run_id", BAD)
def test_bad_run_ids_are_refused_by_the_workspace(tmp_path, run_id):
    with pytest.raises(TfsubmitError, match="is not a run id"):
        Workspace(tmp_path / "ws").run_paths(run_id)


def test_the_cli_touches_nothing_outside_the_workspace(tmp_path):
    """`tfsubmit cancel ../../outside` used to read that folder's run.json and runner.pid,
    SIGKILL the process named there and write files into it."""
    outside = tmp_path / "outside"
    outside.mkdir()
    bystander = subprocess.Popen(["sleep", "300"])
    try:
        (outside / "run.json").write_text(json.dumps({"id": "x", "status": "Running"}))
        (outside / "runner.pid").write_text(str(bystander.pid))
        (outside / "output.log").write_text("private\n")
        before = sorted(p.name for p in outside.iterdir())
        workspace = tmp_path / "ws"
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        for args in (["cancel", "../../outside"], ["logs", "../../outside"],
                     ["show", str(outside)], ["show", ""], ["cancel", ""]):
            result = subprocess.run(
                [sys.executable, "-m", "tfsubmit.cli", "--workspace", str(workspace), *args],
                capture_output=True, text=True, timeout=120, env=env)
            assert result.returncode == 2, (args, result.stdout, result.stderr)
            assert "is not a run id" in result.stderr
            assert "private" not in result.stdout
        assert pid_alive(bystander.pid)
        assert sorted(p.name for p in outside.iterdir()) == before
    finally:
        bystander.kill()
        bystander.wait()


def test_a_unique_prefix_and_latest_name_one_run(tmp_path):
    from tfsubmit.errors import RunNotFoundError
    from tfsubmit.store.record import RunRecord

    workspace = Workspace(tmp_path / "ws")
    with pytest.raises(RunNotFoundError):
        workspace.resolve_run_id("latest")
    for run_id in ("exp_20260101_aaa", "exp_20260102_bbb", "other_1"):
        RunRecord.create(workspace, run_id, run_id.split("_")[0], {})
    assert workspace.resolve_run_id("other") == "other_1"
    assert workspace.resolve_run_id("exp_20260102") == "exp_20260102_bbb"
    assert workspace.resolve_run_id("latest") == "other_1"
    with pytest.raises(TfsubmitError, match="is the start of 2 runs: exp_20260101_aaa, "
                                            "exp_20260102_bbb"):
        workspace.resolve_run_id("exp_")
    with pytest.raises(RunNotFoundError):
        workspace.run_paths(workspace.resolve_run_id("nothing"))
