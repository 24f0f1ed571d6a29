#!/usr/bin/env bash
# Set up everything, then train the example on the local target and print its metrics.
# The first run builds the TensorFlow environment (~30 s) and starts the embedded Prefect
# server; later runs reuse both.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PREFECT_SERVER_ANALYTICS_ENABLED=false
exec .venv/bin/tfsubmit submit examples/keras-synthetic/job.yaml "$@"
