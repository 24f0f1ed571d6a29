"""The steps of a submission as plain code, in order (no Prefect here; tasks/ wraps each):

    context.py      Submission: the typed context, built complete by open_submission
    snapshot.py     1. snapshot_source      -> Snapshot (content hash, manifest)
    environment.py  2. resolve_environment  -> Environment (hash, interpreter, freeze)
    provision.py    3. provision_nodes      -> [Node] (connected, staged, checked)
    launch.py       4. launch_topology      -> Outcome: plan -> pre-flight -> supervise
    supervise.py       the supervisor: streams, restarts, stops process groups
    progress.py        metrics read live while the job runs
    collect.py      5. collect: outputs, logs and metrics into the run folder; final facts
"""
