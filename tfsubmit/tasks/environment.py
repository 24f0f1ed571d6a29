from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tfsubmit import environment as envs
from tfsubmit.errors import TargetError
from tfsubmit.spec import TrainingJob
from tfsubmit.submission import Submission
from tfsubmit.tasks._logging import forwarded


@task(name="resolve_environment", cache_policy=NO_CACHE)
def resolve_environment(job: TrainingJob, sub: Submission) -> envs.Environment:
    """Find or build the job's Python environment (TensorFlow plus pip_packages).

    Args:
        job: the validated job spec.
        sub: the submission; `pip freeze` of the environment is recorded there.

    Returns:
        The environment: its hash, interpreter, and whether it was reused. For targets that
        build on their hosts (SSH), only the hash is known here; the hosts' environments
        come with the nodes.
    """
    sub.check_canceled()
    spec = envs.environment_spec(job)
    if job.custom_docker_image and not getattr(sub.target, "builds_images", False):
        raise TargetError(f"custom_docker_image: only used with docker targets; "
                          f"{job.compute_target!r} is not one")
    if getattr(sub.target, "builds_images", False):
        return _resolve_image(job, sub, spec)
    if sub.target.remote:
        sub.log.event(f"environment {spec.hash[:16]}: built or reused on each host of "
                      f"{job.compute_target!r} while provisioning")
        return envs.Environment(spec.hash, path="", python="", reused=False, freeze="")
    with forwarded(sub.log) as log:
        cached = (sub.workspace.env_cache / spec.hash / envs.MARKER).exists()
        if not cached:
            log.event(f"environment {spec.hash}: building ({', '.join(spec.requirements)})")
        env = envs.resolve_environment(
            spec,
            sub.workspace.env_cache,
            on_line=lambda line: log.write(f"[tfsubmit:env] {line}"),
            cancel=sub.cancel,
        )
        how = "reused" if env.reused else f"built in {env.build_seconds:.1f} s"
        log.event(f"environment {env.hash}: {how} ({env.python})")
    sub.paths.freeze.write_text(env.freeze)
    sub.record(environment_hash=env.hash, environment_reused=env.reused)
    return env


def _resolve_image(job: TrainingJob, sub: Submission, spec: envs.EnvironmentSpec):
    """Docker targets: the environment is an image, found by its hash or built offline."""
    with forwarded(sub.log) as log:
        env = sub.target.resolve_environment(
            spec, custom_image=job.custom_docker_image, use_gpu=job.use_gpu,
            pip_packages=job.pip_packages,
            on_line=lambda line: log.write(f"[tfsubmit:image] {line}"))
        how = "reused" if env.reused else f"built in {env.build_seconds:.1f} s"
        log.event(f"image {env.path}: {how}")
    sub.paths.freeze.write_text(env.freeze)
    sub.record(environment_hash=env.hash, environment_reused=env.reused, image=env.path)
    return env
