"""Fan-out to SSH hosts: is connecting, pre-flighting and starting parallel? One command:

    .venv/bin/python benchmarks/fanout.py [--repeats 3]

Starts 16 real sshd test hosts on 127.0.0.2..17, then for 1, 4, 8 and 16 hosts times
  1. connect + pre-flight (the runtime already on the hosts) + start a trivial process on
     every host (together, as the supervisor starts a job's processes) and wait for all of
     them to exit, each time as a new submission does (a new SSHTarget): cold, a
     connection per submission (`keep_connections: 0`), and warm, through tfsubmit's SSH
     connection pool with the hosts' connections (and host agents) kept from the
     submission before (no key exchange, no Python started per command);
  2. a ps topology submitted through the whole pipeline (1 chief, one worker per host,
     1 ps; a stand-in script instead of TensorFlow, the environment already built):
     from submit until every task has started, cold and warm as above,
and prints the median times and the ratios 16-host / 1-host (goal: under 2).
Here all 16 "hosts" and the client share this machine's cores, so each host's CPU work
(sshd's key exchange, starting the Python helper, the agent's forks) adds up as it would
not on 16 real machines; the second ratio, against 16 hosts done one after another, shows
the parallelism itself. So each line of the first figure also says the CPU time the whole
machine spent per submission (all processes, from /proc/stat), the floor that puts under
the wall time on this machine's cores, and tfsubmit's own side of it (this process and
the SSH pool; the rest is the hosts' sshd, agents and commands).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from sshhosts import loopback_hosts  # noqa: E402

from tfsubmit import Experiment, TensorFlow  # noqa: E402
from tfsubmit.service.server import ensure_server, stop_server  # noqa: E402
from tfsubmit.spec.process import ProcessSpec  # noqa: E402
from tfsubmit.store.layout import Workspace  # noqa: E402
from tfsubmit.targets import sshpool  # noqa: E402
from tfsubmit.targets.config import SSHTargetConfig, save_target  # noqa: E402
from tfsubmit.targets.ssh import SSHTarget  # noqa: E402

COUNTS = (1, 4, 8, 16)
STAND_IN = """import json, os, time
task = json.loads(os.environ["TF_CONFIG"])["task"]
print("started", task["type"], task["index"], flush=True)
time.sleep(1 if task["type"] == "chief" else 300)
"""


CORES = os.cpu_count() or 1


def machine_cpu() -> float:
    """CPU seconds every process of this machine has used (busy time in /proc/stat)."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    busy = sum(fields[:8]) - fields[3] - fields[4]  # all but idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


def client_cpu() -> float:
    """CPU seconds of this process and of the SSH pool (tfsubmit's side of a fan-out)."""
    times = os.times()
    used = times.user + times.system
    stats = sshpool.call("stats")
    if stats:
        with open(f"/proc/{stats['pid']}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        used += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return used


def cpu_note(machine: float, client: float) -> str:
    return (f"; machine CPU {machine:.3f} s a submission (its floor on {CORES} cores: "
            f"{machine / CORES:.3f} s), tfsubmit's side {client:.3f} s")


def fan_out(config: SSHTargetConfig, workdir: str) -> float:
    """connect + pre-flight + start, as a new submission does them."""
    target = SSHTarget("bench", config)
    started = time.perf_counter()
    try:
        target.connect()
        specs = [ProcessSpec(host=host.address, argv=("true",), env={}, cwd=workdir,
                             role="worker", index=i) for i, host in enumerate(config.hosts)]
        with ThreadPoolExecutor(len(specs)) as pool:  # together, as the supervisor does
            handles = list(pool.map(target.start, specs))
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


def ps_topology(hosts, tmp: Path, repeats: int) -> tuple[dict[int, float], dict[int, float]]:
    os.environ.pop("PREFECT_API_URL", None)
    workspace = Workspace(tmp / "ws")
    source = tmp / "src"
    source.mkdir()
    (source / "serve.py").write_text(STAND_IN)
    base = hosts.target_config()
    cold, warm = {}, {}
    try:
        ensure_server(workspace)
        for count in COUNTS:
            for medians, keep in ((cold, 0), (warm, 300)):
                name = f"hosts-{count}-keep-{keep}"
                save_target(workspace.root, name, SSHTargetConfig(
                    **{**base, "hosts": base["hosts"][:count], "keep_connections": keep}))
                submit_to_started(workspace, source, name, count)  # runtime, snapshot, env
                times = [submit_to_started(workspace, source, name, count)
                         for _ in range(repeats)]
                medians[count] = statistics.median(times)
                print(f"ps topology on {count:2d} host(s) ({count + 2} tasks), "
                      f"{'warm' if keep else 'cold'}: submit to all started, median "
                      f"{medians[count]:.3f} s (runs: {', '.join(f'{t:.3f}' for t in times)})",
                      flush=True)
    finally:
        stop_server(workspace)
    return cold, warm


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
                for results, keep in ((medians, 0), (warm, 300)):
                    config = SSHTargetConfig(**{**base, "hosts": base["hosts"][:count],
                                                "keep_connections": keep})
                    fan_out(config, str(workdir))  # runtime uploaded, page cache hot, pool
                    machine, client = machine_cpu(), client_cpu()
                    times = [fan_out(config, str(workdir)) for _ in range(args.repeats)]
                    machine = (machine_cpu() - machine) / args.repeats
                    client = (client_cpu() - client) / args.repeats
                    results[count] = statistics.median(times)
                    print(f"connect+pre-flight+start on {count:2d} host(s), "
                          f"{'warm' if keep else 'cold'}: median {results[count]:.3f} s "
                          f"(runs: {', '.join(f'{t:.3f}' for t in times)})"
                          f"{cpu_note(machine, client)}", flush=True)
            ps_cold, ps_warm = ps_topology(hosts, Path(tmp), args.repeats)
        finally:
            hosts.stop()
    for what, results in (("connect+pre-flight+start, cold", medians),
                          ("connect+pre-flight+start, warm", warm),
                          ("ps submit-to-started, cold", ps_cold),
                          ("ps submit-to-started, warm", ps_warm)):
        print(f"{what}: ratio 16 hosts / 1 host: {results[16] / results[1]:.2f} (goal < 2); "
              f"against 16 x 1 host (1.0 = no parallelism): "
              f"{results[16] / (16 * results[1]):.2f}")
    print("warm / cold: " + ", ".join(
        f"{count} host(s) {warm[count] / medians[count]:.2f} "
        f"(ps {ps_warm[count] / ps_cold[count]:.2f})" for count in COUNTS))


if __name__ == "__main__":
    main()
