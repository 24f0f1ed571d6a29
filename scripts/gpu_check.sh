#!/usr/bin/env bash
# The device check for use_gpu with mpi (see scripts/gpu_check.py). On a machine without
# pydantic, it installs the wheels carried in gpucheck/wheels into a temporary folder.
set -u
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=index,uuid,name,memory.total,driver_version --format=csv
mpirun --version | head -1
if ! python3 -c "import pydantic, yaml, packaging" 2>/dev/null; then
    python3 -m pip install -q --no-index --find-links gpucheck/wheels --target /tmp/tfs-pylib \
        pydantic pyyaml packaging && export PYTHONPATH=/tmp/tfs-pylib
fi
python3 scripts/gpu_check.py
