"""GPU check for distributed_backend="mpi" with use_gpu, for a machine with NVIDIA GPUs.

    python3 scripts/gpu_check.py        (needs mpirun, and pydantic, PyYAML, packaging)

Discovers the GPUs as the local target does, checks that one rank more than there are
GPUs is refused, then runs mpirun exactly as tfsubmit's Horovod launcher plans it, one
rank per GPU, each rank reporting the CUDA_VISIBLE_DEVICES it got and what PyTorch (when
present) sees through it. TensorFlow and Horovod are not needed.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tfsubmit.errors import JobSpecError  # noqa: E402
from tfsubmit.launchers.horovod import check_gpus, plan_horovod  # noqa: E402
from tfsubmit.spec.job import TrainingJob  # noqa: E402
from tfsubmit.spec.process import LaunchOptions  # noqa: E402
from tfsubmit.spec.process import Node  # noqa: E402
from tfsubmit.targets.local import gpu_count  # noqa: E402


def main() -> int:
    gpus = gpu_count()
    print(f"GPUs found by the local target: {gpus}", flush=True)
    if gpus == 0:
        print("no GPU here: nothing to check")
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="tfsubmit-gpucheck-"))
    shutil.copy(ROOT / "scripts" / "gpu_probe.py", workdir / "probe.py")
    (workdir / ".tfsubmit").mkdir()
    job = TrainingJob(source_directory=str(workdir), entry_script="probe.py",
                      distributed_backend="mpi", process_count_per_node=gpus, use_gpu=True)
    node = Node(host="local", workdir=str(workdir), gpus=gpus, python=sys.executable,
                runtime=str(ROOT), address="127.0.0.1")
    check_gpus(job, [node])
    try:
        check_gpus(job.model_copy(update={"process_count_per_node": gpus + 1}), [node])
        print("FAIL: one rank more than GPUs was accepted")
        return 1
    except JobSpecError as exc:
        print(f"refused as it should be: {exc}")
    plan = plan_horovod(job, [node], run_id="gpucheck",
                        options=LaunchOptions(as_root=os.geteuid() == 0))
    print("mpirun argv:", " ".join(plan.spec.argv), flush=True)
    result = subprocess.run(list(plan.spec.argv), cwd=workdir, capture_output=True,
                            text=True, timeout=300, env={**os.environ, **plan.spec.env})
    print(result.stdout)
    print(result.stderr[-3000:])
    lines = [line for line in result.stdout.splitlines() if "CUDA_VISIBLE_DEVICES=" in line]
    wanted = {f"rank {r}: CUDA_VISIBLE_DEVICES={r};" for r in range(gpus)}
    got = {line.split("<stdout>:", 1)[-1].split(" torch")[0] for line in lines}
    ok = result.returncode == 0 and wanted <= got
    print("PASS" if ok else f"FAIL: wanted {sorted(wanted)}, got {sorted(got)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
