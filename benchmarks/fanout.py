"""Fan-out to SSH hosts: is connecting, pre-flighting and starting parallel? One command:

    .venv/bin/python benchmarks/fanout.py [--repeats 3]

Starts 16 real sshd test hosts on 127.0.0.2..17, then for 1, 4, 8 and 16 hosts times
  connect + pre-flight (the runtime already on the hosts) + start a trivial process on
  every host and wait for all of them to exit,
and prints the median times and the ratio 16-host / 1-host (goal: under 2).
Here all 16 "hosts" and the client share this machine's cores, so each host's CPU work
(sshd's key exchange, starting the Python helper) adds up in a way it would not on 16
real machines; the second ratio, against 16 hosts done one after another, shows the
parallelism itself.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from sshhosts import loopback_hosts  # noqa: E402

from tfsubmit.process import ProcessSpec  # noqa: E402
from tfsubmit.targets.config import SSHTargetConfig  # noqa: E402
from tfsubmit.targets.ssh import SSHTarget  # noqa: E402

COUNTS = (1, 4, 8, 16)


def fan_out(config: SSHTargetConfig, workdir: str) -> float:
    started = time.perf_counter()
    target = SSHTarget("bench", config)
    try:
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
            medians = {}
            for count in COUNTS:
                config = SSHTargetConfig(**{**base, "hosts": base["hosts"][:count]})
                fan_out(config, str(workdir))  # warm: runtime uploaded, page cache hot
                times = [fan_out(config, str(workdir)) for _ in range(args.repeats)]
                medians[count] = statistics.median(times)
                print(f"{count:2d} host(s): median {medians[count]:.3f} s "
                      f"(runs: {', '.join(f'{t:.3f}' for t in times)})", flush=True)
        finally:
            hosts.stop()
    print(f"ratio 16 hosts / 1 host: {medians[16] / medians[1]:.2f}  (goal < 2)")
    print(f"ratio 16 hosts / 16 x 1 host (1.0 = no parallelism): "
          f"{medians[16] / (16 * medians[1]):.2f}")


if __name__ == "__main__":
    main()
