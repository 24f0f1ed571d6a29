from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from tfsubmit.environment import Environment, environment_spec, runtime_dir
from tfsubmit.errors import TargetError
from tfsubmit.launchers.horovod import check_gpus
from tfsubmit.process import Node
from tfsubmit.snapshot import ObjectStore, Snapshot, materialize
from tfsubmit.spec import TrainingJob
from tfsubmit.submission import Submission
from tfsubmit.tasks._logging import forwarded


@task(name="provision_nodes", cache_policy=NO_CACHE)
def provision_nodes(
    job: TrainingJob, sub: Submission, snapshot: Snapshot, env: Environment
) -> list[Node]:
    """Prepare the target's nodes: connected, pre-flight checked, snapshot staged.

    Args:
        job: the validated job spec.
        sub: the submission; its target is the one to provision.
        snapshot: the source snapshot to stage on every node.
        env: the environment from resolve_environment (local) or its hash (remote targets
            build it on each host here).

    Returns:
        The nodes, each with its working directory, interpreter and runtime path.
    """
    sub.check_canceled()
    target = sub.target
    store = ObjectStore(sub.workspace.objects)
    with forwarded(sub.log) as log:
        if not target.remote:
            if job.node_count > 1:
                raise TargetError(f"node_count: {job.node_count} nodes asked, but the local "
                                  "target is one node; use process_count_per_node, or an "
                                  "SSH target with that many hosts")
            node = target.provision(sub.paths.root, python=env.python,
                                    runtime=str(runtime_dir(sub.workspace.runtime)))
            check_gpus(job, [node])
            materialize(snapshot, store, Path(node.workdir))
            log.event(f"provisioned {node.host}: working directory {node.workdir}")
            return [node]
        check_gpus(job, [Node(host=h.address, workdir="", gpus=h.gpus)
                         for h in target.config.hosts])
        if job.node_count > len(target.config.hosts):
            raise TargetError(f"node_count: {job.node_count} nodes asked, but target "
                              f"{target.name!r} has {len(target.config.hosts)} host(s)")
        log.event(f"connecting to {len(target.config.hosts)} host(s) of {target.name!r}")
        nodes, envs = target.provision(
            run_id=sub.run_id, snapshot=snapshot, store=store, env_spec=environment_spec(job),
            log=log.event, cancel=sub.cancel,
        )
        primary = envs[nodes[0].host]
        sub.paths.freeze.write_text(primary.freeze)
        for host, host_env in envs.items():
            how = "reused" if host_env.reused else f"built in {host_env.build_seconds:.1f} s"
            log.event(f"environment {host_env.hash}@{host}: {how}")
        log.event(f"provisioned {len(nodes)} host(s); uploaded {target.bytes_uploaded} bytes")
        sub.record(
            hosts=[node.host for node in nodes],
            environment_hash=primary.hash,
            environment_reused=all(e.reused for e in envs.values()),
            uploaded_bytes=target.bytes_uploaded,
        )
    return nodes
