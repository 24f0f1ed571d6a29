"""The command the workspace's Prefect worker runs for each flow run of tfsubmit's
deployments: `python -m tfsubmit.service.flowrun`, in place of `python -m prefect.engine`.

It asks the workspace's fork server (`service/forkserver.py`) for a forked Prefect engine
that takes this process's environment (PREFECT__FLOW_RUN_ID, the worker's control channel),
working directory and standard streams, forwards the signals the worker sends (a cancel's
SIGTERM) to it, and exits with its exit status, so that to the worker it is the engine.
Without a fork server (stopped, or another tfsubmit's) it becomes `python -m prefect.engine`
itself. It imports only the standard library and this package's bare face.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from tfsubmit.service.forkserver import connect_engine

# Set by the workspace's deployments: where the fork server listens.
SOCKET_ENV = "TFSUBMIT_FORKSERVER_SOCKET"
# Set by the workspace's deployments: how often a flow run's Prefect client retries.
RETRIES_ENV = "TFSUBMIT_FLOW_RUN_CLIENT_RETRIES"
# How long the fork server may take to fork the engine before this process runs it itself.
REPLY_SECONDS = 10.0


def main() -> int:
    # A session of its own: stopping or restarting the worker (`tfsubmit server stop`
    # signals its process group) leaves the flow runs it started running; a cancel is sent
    # to this process itself.
    os.setsid()
    # The flow run's client retries as every tfsubmit process's does, not as its worker's.
    os.environ["PREFECT_CLIENT_MAX_RETRIES"] = os.environ.get(RETRIES_ENV, "3")
    socket_path = os.environ.get(SOCKET_ENV)
    try:
        if not socket_path:
            raise OSError("no fork server named")
        conn = connect_engine(Path(socket_path), dict(os.environ), os.getcwd())
    except OSError:
        return _engine_here()
    replies = conn.makefile("rb")
    conn.settimeout(REPLY_SECONDS)
    try:
        first = json.loads(replies.readline() or b"{}")
    except TimeoutError:
        # A fork server too busy (or stopped) to answer: run the engine here. Should it
        # fork one later, that child finds this connection closed and runs nothing.
        conn.close()
        print(f"tfsubmit: the fork server did not answer in {REPLY_SECONDS:.0f} s; starting "
              "the flow run's engine in a Python of its own", file=sys.stderr, flush=True)
        return _engine_here()
    conn.settimeout(None)
    if "pid" not in first:
        print(f"tfsubmit: the fork server could not start the flow run's engine: "
              f"{first.get('error') or 'it closed the connection'}", file=sys.stderr)
        return 1
    child = first["pid"]

    def forward(signum, _frame) -> None:
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    while True:
        try:
            line = replies.readline()
            break
        except InterruptedError:
            continue
    if not line:  # killed outright (the machine's OOM killer, say)
        print("tfsubmit: the flow run's engine process ended without an exit status",
              file=sys.stderr)
        return 1
    return int(json.loads(line).get("exit", 1))


def _engine_here() -> int:
    os.execv(sys.executable, [sys.executable, "-m", "prefect.engine", *sys.argv[1:]])
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
