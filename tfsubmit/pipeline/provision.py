"""Step 3, provision: the target's nodes connected, checked, with the snapshot staged."""

from __future__ import annotations

from dataclasses import asdict

from tfsubmit.launchers.horovod import check_gpus
from tfsubmit.pipeline.context import Submission
from tfsubmit.spec.environment import Environment, environment_spec
from tfsubmit.spec.process import Node
from tfsubmit.store.package import runtime_dir
from tfsubmit.store.runlog import RunLog
from tfsubmit.store.snapshots import Snapshot
from tfsubmit.targets.base import ProvisionRequest, Target


def provision_nodes(sub: Submission, target: Target, snapshot: Snapshot, env: Environment,
                    log: RunLog) -> list[Node]:
    """The nodes, each with its working directory, interpreter and runtime path."""
    sub.check_canceled()
    job = sub.job
    offered = target.hosts()
    target.admit(job)
    check_gpus(job, offered)
    ready = target.provision(ProvisionRequest(
        run_id=sub.run_id, run_dir=sub.paths.root, job=job, snapshot=snapshot, store=sub.store,
        env_spec=environment_spec(job), environment=env,
        runtime=runtime_dir(sub.workspace.runtime), log=log, cancel=sub.cancel,
        note=sub.record.note, queued=sub.record.waiting,
    ))
    nodes = ready.nodes
    facts = {"hosts": [node.host for node in nodes], "uploaded_bytes": ready.uploaded_bytes,
             "nodes": [asdict(node) for node in nodes]}  # for a reaper, should the runner die
    if not env.resolved:  # each host resolved its own
        primary = ready.environments[nodes[0].host]
        sub.paths.freeze.write_text(primary.freeze)
        for host, host_env in ready.environments.items():
            log.event(f"environment {host_env.hash}@{host}: {host_env.how()}")
        facts.update(environment_hash=primary.hash,
                     environment_reused=all(e.reused for e in ready.environments.values()))
    placed = ", ".join(f"{node.host}:{node.workdir}" for node in nodes)
    log.event(f"provisioned {len(nodes)} host(s) ({placed}); uploaded "
              f"{ready.uploaded_bytes} bytes")
    sub.record.note(**facts)
    return nodes
