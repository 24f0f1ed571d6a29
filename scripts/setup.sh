#!/usr/bin/env bash
# Install everything tfsubmit needs into .venv (and Debian packages where missing).
# Safe to re-run: a second run only checks. Used by scripts/demo.sh and scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
APT="apt-get -o DPkg::Lock::Timeout=600 -y -q"

need_apt=()
$PYTHON -c "import ensurepip, venv" 2>/dev/null || need_apt+=(python3-venv python3-pip)
command -v ps >/dev/null || need_apt+=(procps)
# The SSH target's tests start real sshd test hosts; namespaces need iproute2.
[ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
command -v ssh-keygen >/dev/null || need_apt+=(openssh-client)
command -v ip >/dev/null || need_apt+=(iproute2)
# distributed_backend="mpi": Open MPI, and a compiler and Python headers to build Horovod.
command -v mpirun >/dev/null || need_apt+=(openmpi-bin)
command -v mpicc >/dev/null || need_apt+=(libopenmpi-dev)
command -v g++ >/dev/null || need_apt+=(g++)
$PYTHON -c "import sysconfig, os, sys; sys.exit(not os.path.exists(sysconfig.get_paths()['include'] + '/Python.h'))" \
    || need_apt+=(python3-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${need_apt[*]}"
    $APT update -qq && DEBIAN_FRONTEND=noninteractive $APT install --no-install-recommends "${need_apt[@]}"
fi

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    $PYTHON -m venv .venv
fi
if [ ! -x .venv/bin/uv ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check uv
fi
# Byte-compiled at install: imports stay fast even where PYTHONDONTWRITEBYTECODE is set.
.venv/bin/uv pip install -q --python .venv/bin/python --compile-bytecode -e ".[test]"
echo "setup: ready ($(.venv/bin/python -c 'import prefect, tfsubmit; print("prefect", prefect.__version__, "tfsubmit", tfsubmit.__version__)'))"
