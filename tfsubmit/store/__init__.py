"""The workspace on disk. Every file name is spelled here, once; each file has one owner.

    layout.py    Workspace and RunPaths: where everything lives
    record.py    RunRecord: the only writer of a run's run.json (named transitions)
    cancel.py    CancelFlag: a run's `cancel.requested`
    objects.py   the content-addressed object store (used on both sides of SSH)
    snapshots.py what a source tree held, by object; writing one out again
    package.py   tfsubmit's own code: its hash, and the copy put on a job's PYTHONPATH
    runlog.py    RunLog: the merged, tagged output.log
    registry.py  promoted models, one numbered version per promotion

Standard library only, but for `registry.py` (which reads metrics and goals).
"""
