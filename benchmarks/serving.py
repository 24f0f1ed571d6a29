"""What does serving a model cost over calling it? One command.

    .venv/bin/python benchmarks/serving.py [--requests 500] [--seconds 5]

On a fresh workspace (its Prefect server started first, the inference environment built
once before the timings): a small Keras model (4 -> 64 -> 64 -> 1) registered and served
with an Azure-style scoring script (json in, model, json out).
- The baseline, in the same run: the model called in one process (the inference
  environment's Python), 30 rows per call: p50 and p99 of `--requests` calls.
- Served: the same 30 rows POSTed to the scoring URI over a kept-alive connection: p50,
  p99, and the overhead over the baseline (goal, issue 26: <= 5 ms at p50).
- Requests per second from 8 concurrent clients for `--seconds`.
- Deploy to Healthy with the environment cached (goal <= 10 s): `deploy()` timed from its
  call until the endpoint answers Healthy (a deploy-model flow run: environment found,
  supervisor started, the scoring script's init() done).
Its last lines read `overhead p50 N ms` and `healthy in N s`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

from tfsubmit.api.serving import deploy
from tfsubmit.service.server import ensure_server, stop_server
from tfsubmit.serving.endpoints import Endpoints
from tfsubmit.store.layout import Workspace
from tfsubmit.store.registry import ModelRegistry

MAKE_MODEL = """
import numpy as np, tensorflow as tf
model = tf.keras.Sequential([tf.keras.Input(shape=(4,)),
                             tf.keras.layers.Dense(64, activation="relu"),
                             tf.keras.layers.Dense(64, activation="relu"),
                             tf.keras.layers.Dense(1)])
model.save("model/model.keras")
"""

SCORE = """
import json, os
import numpy as np
import tensorflow as tf

def init():
    global model
    model = tf.keras.models.load_model(os.path.join(os.environ["AZUREML_MODEL_DIR"],
                                                    "model", "model.keras"))

def run(raw_data):
    rows = np.asarray(json.loads(raw_data)["data"], dtype="float32")
    return model(rows).numpy().tolist()
"""

IN_PROCESS = """
import json, sys, time
import numpy as np
import tensorflow as tf
model = tf.keras.models.load_model(sys.argv[1])
rows = np.asarray(json.loads(sys.argv[2]), dtype="float32")
for _ in range(20):
    model(rows)
times = []
for _ in range(int(sys.argv[3])):
    began = time.perf_counter()
    model(rows).numpy()
    times.append(time.perf_counter() - began)
print(json.dumps(times))
"""


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if q < 100 \
        else max(values)


def timed_posts(url: str, body: bytes, count: int) -> list[float]:
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    times = []
    try:
        for i in range(count + 20):
            began = time.perf_counter()
            connection.request("POST", parts.path, body, {"Content-Type": "application/json"})
            reply = connection.getresponse()
            reply.read()
            if reply.status != 200:
                raise RuntimeError(f"the endpoint answered {reply.status}")
            if i >= 20:  # warm-up first
                times.append(time.perf_counter() - began)
    finally:
        connection.close()
    return times


def requests_per_second(url: str, body: bytes, clients: int, seconds: float) -> float:
    done = [0] * clients
    stop = time.monotonic() + seconds

    def client(i: int) -> None:
        parts = urllib.parse.urlsplit(url)
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        while time.monotonic() < stop:
            connection.request("POST", parts.path, body, {"Content-Type": "application/json"})
            connection.getresponse().read()
            done[i] += 1
        connection.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tfsubmit-serving-") as tmp:
        root = Path(tmp)
        os.environ.pop("PREFECT_API_URL", None)
        ws = Workspace(root / "ws")
        ensure_server(ws)
        endpoints = Endpoints(ws)
        try:
            (root / "score").mkdir()
            (root / "score" / "score.py").write_text(SCORE)
            # The inference environment, built (or found) by a first deployment of a
            # throwaway model; the model itself is then made with its Python.
            env_python = _inference_python(ws, root)
            (root / "model").mkdir()
            subprocess.run([env_python, "-c", MAKE_MODEL], cwd=root, check=True,
                           capture_output=True)
            info = ModelRegistry(ws).register("bench", root / "model",
                                              extra={"job": {"framework_version": "2.21"}})
            began = time.perf_counter()
            endpoint = deploy("bench", f"bench:{info['version']}", workspace=ws.root,
                              score_script="score.py", source_directory=str(root / "score"),
                              show_output=False)
            healthy = time.perf_counter() - began
            rows = [[0.1 * i, 0.2, -0.3, 0.4 * i] for i in range(30)]
            body = json.dumps({"data": rows}).encode()
            baseline = json.loads(subprocess.run(
                [env_python, "-c", IN_PROCESS, str(root / "model" / "model.keras"),
                 json.dumps(rows), str(args.requests)],
                check=True, capture_output=True, text=True,
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}).stdout.splitlines()[-1])
            served = timed_posts(endpoint.scoring_uri, body, args.requests)
            rps = requests_per_second(endpoint.scoring_uri, body, 8, args.seconds)
        finally:
            for name in endpoints.names():
                endpoints.delete(name)
            stop_server(ws)
    base50, base99 = percentile(baseline, 50) * 1e3, percentile(baseline, 99) * 1e3
    p50, p99 = percentile(served, 50) * 1e3, percentile(served, 99) * 1e3
    print(f"in-process model call, 30 rows: p50 {base50:.2f} ms, p99 {base99:.2f} ms "
          f"({len(baseline)} calls; the baseline)")
    print(f"served (scoring script, kept-alive HTTP): p50 {p50:.2f} ms, p99 {p99:.2f} ms "
          f"(x{p50 / base50:.2f} of the baseline at p50)")
    print(f"8 concurrent clients: {rps:.0f} requests/s")
    print(f"overhead p50 {p50 - base50:.2f} ms")
    print(f"healthy in {healthy:.2f} s")


def _inference_python(ws: Workspace, root: Path) -> str:
    """The inference environment's Python (built here if the cache lacks it)."""
    warm = root / "warm"
    warm.mkdir()
    (warm / "placeholder.txt").write_text("x")
    info = ModelRegistry(ws).register("warm-up", warm,
                                      extra={"job": {"framework_version": "2.21"}})
    print("building or finding the inference environment ...", file=sys.stderr)
    endpoints = Endpoints(ws)
    version = endpoints.plan("warm-up", f"warm-up:{info['version']}",
                             score_script="score.py", source_directory=str(root / "score"))
    env = endpoints.environment("warm-up", version, lambda line: None)
    endpoints.delete("warm-up")
    return env.python


if __name__ == "__main__":
    main()
