"""One endpoint process: a model served over HTTP by Starlette under uvicorn.

Runs in the endpoint's inference environment, on the listening socket its supervisor
(supervisor.py) holds and hands down (`--fd`), so that a new version can take over the
socket before the old process stops: no request is refused in between.

With a scoring script, Azure ML's contract: `init()` once, before the first request, with
AZUREML_MODEL_DIR naming the model's version folder; `run(raw_data)` per request, the
request body as a string; its return value is the JSON reply.
    GET  /               liveness ("Healthy")
    POST /score          run(body); 400 for a body that is not JSON, 500 with the
                         exception's message when run raises (the process stays up)
    GET  /swagger.json   an OpenAPI description
Without one, a SavedModel or Keras model with TensorFlow Serving's REST API:
    GET  /v1/models/NAME           the version's status
    POST /v1/models/NAME:predict   {"instances": [...]} (rows) or {"inputs": ...} (columns)
and /score answers {"data" | "instances": rows} with the predictions, for Azure's clients.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route


def _plain(value: Any) -> Any:
    """numpy arrays and scalars, tensors: as JSON takes them."""
    if hasattr(value, "numpy"):
        value = value.numpy()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _json(value: Any, status: int = 200) -> Response:
    return Response(json.dumps(value, default=_plain), status_code=status,
                    media_type="application/json")


def _error(status: int, message: str) -> Response:
    return _json({"error": message}, status)


class ScoringScript:
    """An Azure ML scoring script: init() once, run(raw_data) per request."""

    def __init__(self, path: Path) -> None:
        sys.path.insert(0, str(path.parent))
        spec = importlib.util.spec_from_file_location("score", path)
        self.module = importlib.util.module_from_spec(spec)
        sys.modules["score"] = self.module
        spec.loader.exec_module(self.module)

    def init(self) -> None:
        self.module.init()

    def __call__(self, raw: str) -> Any:
        return self.module.run(raw)


class ServedModel:
    """A SavedModel or Keras model, called as TensorFlow Serving calls it."""

    def __init__(self, path: Path) -> None:
        import tensorflow as tf

        self.tf = tf
        found = self._find(path)
        if found.suffix in (".keras", ".h5"):
            model = tf.keras.models.load_model(found, compile=False)
            self.call = lambda x: model(x, training=False)
            self.columns = False
        else:
            loaded = tf.saved_model.load(str(found))
            signature = loaded.signatures.get("serving_default")
            if signature is None:
                raise RuntimeError(f"the SavedModel at {found} has no serving_default "
                                   "signature; export it with one, or serve it with a "
                                   "scoring script")
            self._loaded = loaded  # keeps the signature's variables alive
            self.inputs = list(signature.structured_input_signature[1])
            self.call = lambda x: signature(**self._named(x))
            self.columns = True

    @staticmethod
    def _find(path: Path) -> Path:
        """The model in a registered file or folder: itself, a SavedModel folder in it, or
        its one .keras/.h5 file."""
        if path.is_file() or (path / "saved_model.pb").is_file():
            return path
        for pattern in ("**/saved_model.pb", "**/*.keras", "**/*.h5"):
            found = sorted(path.glob(pattern))
            if found:
                return found[0].parent if found[0].name == "saved_model.pb" else found[0]
        raise RuntimeError(f"no SavedModel (saved_model.pb) and no .keras or .h5 file under "
                           f"{path}; give a scoring script to serve anything else")

    def _named(self, x: Any) -> dict[str, Any]:
        if isinstance(x, dict):
            return {k: self.tf.constant(v) for k, v in x.items()}
        if len(self.inputs) != 1:
            raise ValueError(f"the model takes inputs {self.inputs}: send them by name")
        return {self.inputs[0]: self.tf.constant(x, dtype=self.tf.float32)}

    def predict(self, x: Any) -> Any:
        import numpy as np

        if not isinstance(x, dict):
            x = np.asarray(x, dtype="float32")
        out = self.call(x)
        if isinstance(out, dict) and len(out) == 1:
            out = next(iter(out.values()))
        if isinstance(out, dict):
            return {k: _plain(v) for k, v in out.items()}
        return _plain(out)


def build_app(spec: dict[str, Any], *, on_ready=lambda: None) -> Starlette:
    """The endpoint's app for one version's spec (see supervisor.py)."""
    keys = [k for k in spec.get("keys") or [] if k]
    name = spec["model_name"]
    version = str(spec["model_version"])
    state: dict[str, Any] = {}

    def authorized(request: Request) -> bool:
        return not keys or request.headers.get("authorization", "") in \
            {f"Bearer {k}" for k in keys}

    async def startup() -> None:
        # Inside the scoring script's own process, as Azure runs it.
        os.environ["AZUREML_MODEL_DIR"] = spec["model_dir"]
        if spec.get("score_script"):
            scorer = ScoringScript(Path(spec["score_script"]))
            await run_in_threadpool(scorer.init)
            state["score"] = scorer
        else:
            served = await run_in_threadpool(ServedModel, Path(spec["model_path"]))
            state["model"] = served
        import asyncio
        import signal

        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, _on_retire)
        print(f"[endpoint] {spec['endpoint']}: model {name}:{version} ready", flush=True)
        on_ready()

    async def liveness(request: Request) -> Response:
        return PlainTextResponse("Healthy")

    async def body_json(request: Request) -> tuple[str, Any] | Response:
        raw = (await request.body()).decode("utf-8", "replace")
        try:
            return raw, json.loads(raw)
        except ValueError as exc:
            return _error(400, f"the request body is not JSON: {exc}")

    async def score(request: Request) -> Response:
        if not authorized(request):
            return _error(401, "missing or wrong key: send 'Authorization: Bearer KEY' "
                          "(service.get_keys())")
        parsed = await body_json(request)
        if isinstance(parsed, Response):
            return parsed
        raw, data = parsed
        try:
            if "score" in state:
                result = await run_in_threadpool(state["score"], raw)
            else:
                rows = data.get("data", data.get("instances")) if isinstance(data, dict) \
                    else data
                result = await run_in_threadpool(state["model"].predict, rows)
        except Exception as exc:  # noqa: BLE001 (the script's error is the reply)
            traceback.print_exc()
            return _error(500, f"{type(exc).__name__}: {exc}")
        return _json(result)

    async def model_status(request: Request) -> Response:
        target = request.path_params["target"]
        if request.method == "GET":
            if target != name:
                return _error(404, f"no model {target!r} here; this endpoint serves {name!r}")
            return _json({"model_version_status": [{
                "version": version, "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""}}]})
        model, _, verb = target.partition(":")
        if model != name or verb != "predict":
            return _error(404, f"POST /v1/models/{name}:predict is served here")
        if not authorized(request):
            return _error(401, "missing or wrong key: send 'Authorization: Bearer KEY'")
        if "model" not in state:
            return _error(400, "this endpoint runs a scoring script: POST /score")
        parsed = await body_json(request)
        if isinstance(parsed, Response):
            return parsed
        _, data = parsed
        if not isinstance(data, dict) or not ({"instances", "inputs"} & set(data)):
            return _error(400, 'give {"instances": [...]} (rows) or {"inputs": ...} (columns)')
        columns = "inputs" in data
        try:
            result = await run_in_threadpool(state["model"].predict,
                                             data["inputs" if columns else "instances"])
        except Exception as exc:  # noqa: BLE001
            return _error(400, f"{type(exc).__name__}: {exc}")
        return _json({"outputs": result} if columns else {"predictions": result})

    async def swagger(request: Request) -> Response:
        return _json({
            "openapi": "3.0.1",
            "info": {"title": spec["endpoint"], "version": version,
                     "description": f"model {name}:{version}"},
            "paths": {
                "/": {"get": {"summary": "liveness", "responses": {"200": {"description":
                                                                             "Healthy"}}}},
                "/score": {"post": {"summary": "score a JSON request body",
                                    "responses": {"200": {"description": "the result"},
                                                  "400": {"description": "not JSON"},
                                                  "500": {"description": "run() raised"}}}},
                f"/v1/models/{name}:predict": {"post": {"summary": "TensorFlow Serving's "
                                                        "predict (no scoring script)"}},
            }})

    return Starlette(
        routes=[Route("/", liveness), Route("/score", score, methods=["POST"]),
                Route("/swagger.json", swagger),
                Route("/v1/models/{target}", model_status, methods=["GET", "POST"])],
        lifespan=_lifespan(startup))


def _lifespan(startup):
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        await startup()
        yield

    return lifespan


# Seconds a retired version leaves kept-alive connections open before closing them.
KEEP_ALIVE_GRACE = 2.0
# The uvicorn server of this process (main() sets it), for retiring.
_SERVER: list[Any] = []


async def _retire() -> None:
    """Stop taking connections from the shared socket (the new version takes them), answer
    those taken, then exit. uvicorn's own shutdown (TERM) would close a connection taken
    whose request had not come yet: its client would see a reset."""
    import asyncio

    server = _SERVER[0]
    loop = asyncio.get_running_loop()
    for listener in server.servers:
        listener.close()  # our copy of the socket only: the others keep listening
    began, quiet_since, asked = loop.time(), None, False
    while True:
        await asyncio.sleep(0.05)
        if server.server_state.connections:
            quiet_since = None
            if not asked and loop.time() - began > KEEP_ALIVE_GRACE:
                # Kept-alive connections would stay ours: answer what they asked with
                # `Connection: close`, close the idle ones (clients reconnect, to the new
                # version).
                asked = True
                for connection in list(server.server_state.connections):
                    connection.shutdown()
        elif quiet_since is None:
            quiet_since = loop.time()
        elif loop.time() - quiet_since > 0.5:
            break
    server.should_exit = True


def _on_retire() -> None:
    import asyncio

    asyncio.get_running_loop().create_task(_retire())


def main() -> int:
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--spec", required=True)
    parser.add_argument("--ready", required=True)
    args = parser.parse_args()
    spec = json.loads(Path(args.spec).read_text())

    def ready() -> None:
        Path(args.ready).write_text(str(os.getpid()))

    app = build_app(spec, on_ready=ready)
    config = uvicorn.Config(app, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=30, lifespan="on")
    server = uvicorn.Server(config)
    _SERVER.append(server)
    # The inherited socket as what it is (TCP): uvicorn's `fd=` takes it as a Unix socket,
    # and asyncio then leaves TCP_NODELAY off its connections (measured: Nagle's algorithm
    # and delayed ACKs added 40 ms to every reply).
    import socket

    server.run(sockets=[socket.socket(fileno=args.fd)])
    # A failed start-up (init raised) ends here too: uvicorn reports it and returns.
    return 0 if server.started else 3


if __name__ == "__main__":
    sys.exit(main())
