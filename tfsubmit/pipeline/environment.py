"""Step 2, environment: the job's Python environment (TensorFlow plus pip_packages), found
or built by the target where it builds it before the nodes exist."""

from __future__ import annotations

from tfsubmit.pipeline.context import Submission
from tfsubmit.spec.environment import Environment, environment_spec
from tfsubmit.store.runlog import RunLog
from tfsubmit.targets.base import Target


def resolve_environment(sub: Submission, target: Target, log: RunLog) -> Environment:
    """The environment of `sub.job` on `target`; its `pip freeze` is kept with the run.

    Where each host builds its own while provisioning (SSH), only the hash is known here.
    """
    sub.check_canceled()
    env = target.prepare_environment(sub.job, environment_spec(sub.job),
                                     cache=sub.workspace.env_cache, log=log, cancel=sub.cancel)
    if env.resolved:
        sub.paths.freeze.write_text(env.freeze)
        sub.record.note(environment_hash=env.hash, environment_reused=env.reused,
                        **({"image": env.image} if env.image else {}))
    return env
