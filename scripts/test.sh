#!/usr/bin/env bash
# Set up everything, then run the linter and the whole test suite.
# The tests start (and stop, by PID) their own Prefect server in a temporary workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The deployment tests load Prefect's UI in a real, headless browser (Debian's chromium);
# the docker tests start their own dockerd and bootstrap a base image with debootstrap;
# the load tests start their own PostgreSQL; the Slurm tests their own cluster.
need=()
command -v chromium >/dev/null || need+=(chromium)
# ... and click in it (the Cancel button of a run's page) through chromedriver and selenium.
command -v chromedriver >/dev/null || need+=(chromium-driver)
command -v dockerd >/dev/null || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
# The load tests run the Prefect server on a real PostgreSQL, which they start and stop.
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || need+=(postgresql)
# The Slurm tests start their own cluster: munged, slurmctld, one slurmd per node.
command -v slurmctld >/dev/null || need+=(slurm-wlm)
command -v munged >/dev/null || need+=(munge)
if [ ${#need[@]} -gt 0 ]; then
    echo "test: installing ${need[*]}"
    APT="apt-get -o DPkg::Lock::Timeout=600 -y -q"
    $APT update -qq && DEBIAN_FRONTEND=noninteractive $APT install "${need[@]}"
fi
export PREFECT_SERVER_ANALYTICS_ENABLED=false
unset PREFECT_API_URL
.venv/bin/ruff check tfsubmit tests benchmarks
# The docs site builds with every link and anchor true (MkDocs' strict mode).
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet -d "$(mktemp -d)"
# The slowest tests are listed at the end: CI should stay under 30 minutes.
exec .venv/bin/python -m pytest -q -p no:cacheprovider --durations=30 "$@"
