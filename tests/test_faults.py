"""Fault injection, one test per numbered item of the reliability issue (#13): each one failed
on main before the fix. Real processes, real files; no mocks of what the item names."""

from __future__ import annotations

import os

from tfsubmit.pipeline.snapshot import take_snapshot
from tfsubmit.store.objects import ObjectStore
from tfsubmit.store.snapshots import materialize


def test_13_a_folder_and_an_alias_of_it_both_ship(tmp_path):
    """`a_alias -> data` beside `data/x.txt` used to ship only `a_alias/x.txt`, skipping `data`
    as a "symlink loop"; a real loop (`data/up -> ..`) is still cut."""
    src = tmp_path / "src"
    (src / "data").mkdir(parents=True)
    (src / "data" / "x.txt").write_text("x\n")
    (src / "train.py").write_text("open('data/x.txt').read()\n")
    os.symlink("data", src / "a_alias")
    os.symlink("..", src / "data" / "up")
    store = ObjectStore(tmp_path / "objects")
    snap = take_snapshot(src, store, entry_script="train.py")
    assert {"data/x.txt", "a_alias/x.txt", "train.py"} <= set(snap.files)
    assert "symlink loop" in snap.skipped["data/up"]
    assert "a_alias/up" in snap.skipped
    materialize(snap, store, tmp_path / "staged")
    assert (tmp_path / "staged" / "data" / "x.txt").read_text() == "x\n"


SLOW_START = """
import sys, time
print("2026-11-28 05:45:58.123456: I tensorflow/core/platform/cpu_feature_guard.cc:210] noise",
      file=sys.stderr, flush=True)
print("I0000 00:00:1732772758.123456    1234 grpc_server_lib.cc:467] Started server", flush=True)
time.sleep(6)  # TensorFlow connecting on a loaded machine: silence
for step in range(5):
    print(f"step {step}", flush=True)
    time.sleep(0.2)
"""


def _supervise(tmp_path, code, run_id, **kwargs):
    import sys
    import threading

    from tfsubmit.pipeline.supervise import supervise
    from tfsubmit.spec.process import ProcessSpec
    from tfsubmit.store.runlog import RunLog
    from tfsubmit.targets.local import LocalTarget

    spec = ProcessSpec(host="local", argv=(sys.executable, "-c", code),
                       env={"TFSUBMIT_RUN_ID": run_id}, cwd=str(tmp_path), role="worker",
                       index=0)
    log = RunLog(tmp_path / "output.log")
    try:
        return supervise(LocalTarget(), [spec], run_id=run_id, log=log,
                         log_dir=tmp_path / "logs", cancel=threading.Event(), grace_seconds=2,
                         **kwargs)
    finally:
        log.close()


def test_12_start_up_silence_is_not_a_hang(tmp_path):
    """hang_timeout_seconds used to count from the start: a job silent while TensorFlow
    connects was stopped as hung before its first step."""
    outcome = _supervise(tmp_path, SLOW_START, "slow-start-1", hang_seconds=4,
                         startup_seconds=120)
    assert outcome.status == "Completed", outcome.reason
    assert "step 4" in (tmp_path / "output.log").read_text()


def test_12_start_up_has_its_own_limit(tmp_path):
    outcome = _supervise(tmp_path, "import time; print('I0000 00:00:1.1 1 x] noise', "
                         "flush=True); time.sleep(300)", "stuck-start-1", hang_seconds=1,
                         startup_seconds=3)
    assert outcome.status == "Failed"
    assert outcome.reason == ("no progress (a metric, or a line of the job's own) within "
                              "startup_timeout_seconds=3")
