"""Fan-out to SSH hosts: is connecting, pre-flighting and starting parallel? One command:

    .venv/bin/python benchmarks/fanout.py [--repeats 3]

Starts 16 real sshd test hosts on 127.0.0.2..17, then for 1, 4, 8 and 16 hosts times
  1. connect + pre-flight (the runtime already on the hosts) + start a trivial process on
     every host and wait for all of them to exit; and the same on hosts connected
     beforehand (what connections kept between submissions would leave: no key exchange);
  2. a ps topology submitted through the whole pipeline (1 chief, one worker per host,
     1 ps; a stand-in script instead of TensorFlow, the environment already built):
     from submit until every task has started,
and prints the median times and the ratios 16-host / 1-host (goal: under 2).
Here all 16 "hosts" and the client share this machine's cores, so each host's CPU work
(sshd's key exchange, starting the Python helper) adds up in a way it would not on 16
real machines; the second ratio, against 16 hosts done one after another, shows the
parallelism itself.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from sshhosts import loopback_hosts  # noqa: E402

from tfsubmit import Experiment, TensorFlow  # noqa: E402
from tfsubmit.service.server import ensure_server, stop_server  # noqa: E402
from tfsubmit.spec.process import ProcessSpec  # noqa: E402
from tfsubmit.store.layout import Workspace  # noqa: E402
from tfsubmit.targets.config import SSHTargetConfig, save_target  # noqa: E402
from tfsubmit.targets.ssh import SSHTarget  # noqa: E402

COUNTS = (1, 4, 8, 16)
STAND_IN = """import json, os, time
task = json.loads(os.environ["TF_CONFIG"])["task"]
print("started", task["type"], task["index"], flush=True)
time.sleep(1 if task["type"] == "chief" else 300)
"""


def fan_out(config: SSHTargetConfig, workdir: str, *, warm: bool = False) -> float:
    """connect + pre-flight + start; `warm`: the hosts connected beforehand (untimed), as
    connections kept between submissions would leave them: pre-flight + start only."""
    target = SSHTarget("bench", config)
    if warm:
        target.connect()
    started = time.perf_counter()
    try:
        if warm:
            target._each(lambda conn: target._preflight(conn, ""))
        else:
            target.connect()
        handles = [
            target.start(ProcessSpec(host=host.address, argv=("true",), env={}, cwd=workdir,
                                     role="worker", index=i))
            for i, host in enumerate(config.hosts)
        ]
        while any(handle.poll() is None for handle in handles):
            time.sleep(0.005)
        codes = {handle.poll() for handle in handles}
        assert codes == {0}, codes
        return time.perf_counter() - started
    finally:
        target.close()


def submit_to_started(workspace: Workspace, source: Path, target: str, hosts: int) -> float:
    job = TensorFlow(source_directory=str(source), entry_script="serve.py",
                     compute_target=target, node_count=hosts, distributed_backend="ps",
                     worker_count=hosts, parameter_server_count=1, chief=True)
    started = time.time()
    run = Experiment("fanout", workspace=workspace.root).submit(job)
    details = run.wait_for_completion(timeout=600)
    return details["started"] - started


def ps_topology(hosts, tmp: Path, repeats: int) -> dict[int, float]:
    os.environ.pop("PREFECT_API_URL", None)
    workspace = Workspace(tmp / "ws")
    source = tmp / "src"
    source.mkdir()
    (source / "serve.py").write_text(STAND_IN)
    base = hosts.target_config()
    medians = {}
    try:
        ensure_server(workspace)
        for count in COUNTS:
            name = f"hosts-{count}"
            save_target(workspace.root, name,
                        SSHTargetConfig(**{**base, "hosts": base["hosts"][:count]}))
            submit_to_started(workspace, source, name, count)  # warm: runtime, snapshot, env
            times = [submit_to_started(workspace, source, name, count) for _ in range(repeats)]
            medians[count] = statistics.median(times)
            print(f"ps topology on {count:2d} host(s) ({count + 2} tasks): submit to all "
                  f"started, median {medians[count]:.3f} s "
                  f"(runs: {', '.join(f'{t:.3f}' for t in times)})", flush=True)
    finally:
        stop_server(workspace)
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tfsubmit-fanout-") as tmp:
        hosts = loopback_hosts(Path(tmp) / "hosts", max(COUNTS)).start()
        workdir = Path(tmp) / "job"
        (workdir / ".tfsubmit").mkdir(parents=True)
        try:
            base = hosts.target_config()
            medians, warm = {}, {}
            for count in COUNTS:
                config = SSHTargetConfig(**{**base, "hosts": base["hosts"][:count]})
                fan_out(config, str(workdir))  # warm: runtime uploaded, page cache hot
                times = [fan_out(config, str(workdir)) for _ in range(args.repeats)]
                medians[count] = statistics.median(times)
                print(f"connect+pre-flight+start on {count:2d} host(s): median "
                      f"{medians[count]:.3f} s (runs: {', '.join(f'{t:.3f}' for t in times)})",
                      flush=True)
                times = [fan_out(config, str(workdir), warm=True) for _ in range(args.repeats)]
                warm[count] = statistics.median(times)
                print(f"  the same on connected hosts (no key exchange): median "
                      f"{warm[count]:.3f} s", flush=True)
            ps = ps_topology(hosts, Path(tmp), args.repeats)
        finally:
            hosts.stop()
    for what, results in (("connect+pre-flight+start", medians),
                          ("pre-flight+start, hosts connected", warm),
                          ("ps submit-to-started", ps)):
        print(f"{what}: ratio 16 hosts / 1 host: {results[16] / results[1]:.2f} (goal < 2); "
              f"against 16 x 1 host (1.0 = no parallelism): "
              f"{results[16] / (16 * results[1]):.2f}")


if __name__ == "__main__":
    main()
