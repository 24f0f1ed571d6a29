"""One Horovod rank under mpirun: `python -m tfsubmit.runtime.rank SCRIPT ARGS...`.

mpirun starts this in every rank; it moves into the rank's own run folder (hosts may share
a file system), points the rank's metrics and outputs there, picks its GPU, then runs the
entry script in this very process.
"""

from __future__ import annotations

import os
import runpy
import sys

from tfsubmit.runtime.metrics import metrics_file


def rank(script: str, args: list[str]) -> None:
    index = int(os.environ["OMPI_COMM_WORLD_RANK"])
    workdir = os.environ["TFSUBMIT_RANK_DIRS"].split(":")[index]
    os.chdir(workdir)
    os.environ.update({
        "TFSUBMIT_INDEX": str(index),
        "TFSUBMIT_METRICS_FILE": metrics_file(workdir, "rank", index),
        "TFSUBMIT_OUTPUTS": f"{workdir}/outputs",
    })
    for stream in (sys.stdout, sys.stderr):  # whole lines to mpirun, as they come
        # Not write-through (PYTHONUNBUFFERED may reach us from mpirun's environment): then
        # print() sends its text and its newline in two writes, and mpirun tags them apart.
        stream.reconfigure(line_buffering=True, write_through=False)
    gpus = os.environ.get("TFSUBMIT_RANK_GPUS")
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus.split(":")[index]
    sys.argv = [script, *args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    rank(sys.argv[1], sys.argv[2:])
