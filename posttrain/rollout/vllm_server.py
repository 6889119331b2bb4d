"""The HTTP server of ``posttrain vllm-serve``: a ``vllm.LLM`` that generates for a trainer and takes its weights.

Standard library only (``http.server``), JSON in and out. Calls on the engine run one at a time, in arrival
order, in one thread (:class:`EngineLoop`), so a generation asked after a weight update uses the new weights.

=====================================  ======  ==========================================================
endpoint                               method  does
=====================================  ======  ==========================================================
``/health/``                           GET     ``{"status": "ok"}`` once the engine is up
``/get_world_size/``                   GET     ``{"world_size": W}``: the vLLM workers (tensor-parallel size)
``/generate/``                         POST    ``{"prompt_ids", "sampling_params"}`` -> ``{"prompt_ids",
                                               "completion_ids", "logprobs"}`` (one entry per completion)
``/init_communicator/``                POST    ``{"host", "port", "world_size"}``: the workers join the NCCL
                                               weight-sync group (in the background: the trainer joins next)
``/update_named_params/``              POST    ``{"params": [[name, dtype, shape], ...]}``: the workers
                                               receive these tensors by NCCL broadcast (background) and load them
``/update_weights/``                   POST    safetensors bytes: load these tensors (the ``http`` transport)
``/reset_prefix_cache/``               POST    forget cached prefixes (computed with the old weights)
``/close_communicator/``               POST    leave the NCCL group
=====================================  ======  ==========================================================

An error in a background call (NCCL) is reported by the next request.

Security: the server binds 127.0.0.1 unless told otherwise. Bound to any other address it needs a shared token
(``POSTTRAIN_VLLM_TOKEN``, or ``--token_file``), and every request must carry it (``Authorization: Bearer TOKEN``;
the client sends the same variable): whoever can reach the port could otherwise replace the served weights. Request
bodies are capped (:data:`MAX_JSON_BYTES`, and ``max_weights_bytes`` for ``/update_weights/``). docs/vllm.md,
"Across machines".
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from .vllm_backend import load_weights_on_worker, request_output_lists, require_vllm, sampler_logprobs_option

logger = logging.getLogger("posttrain")

WORKER_EXTENSION = "posttrain.rollout.vllm_backend.WeightSyncWorkerExtension"
TOKEN_ENV = "POSTTRAIN_VLLM_TOKEN"
MAX_JSON_BYTES = 64 * 2**20
"""The largest JSON request body (prompts of a generation, parameter lists) the server reads."""
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def read_token(token_file: str | None = None) -> str | None:
    """The shared token: the contents of ``token_file`` if given, else ``$POSTTRAIN_VLLM_TOKEN``, else None."""
    if token_file:
        with open(token_file, encoding="utf-8") as f:
            token = f.read().strip()
        if not token:
            raise ValueError(f"Token file {token_file} is empty.")
        return token
    return os.environ.get(TOKEN_ENV) or None


def is_loopback(host: str) -> bool:
    return host in LOOPBACK or host.startswith("127.")


def check_exposure(host: str, token: str | None) -> None:
    """Refuse to listen beyond loopback without a shared token."""
    if not is_loopback(host) and not token:
        raise ValueError(
            f"vllm-serve on {host} (not this machine's loopback address) needs a shared token: anyone who can reach "
            f"the port could replace the served model's weights. Set {TOKEN_ENV} (the same value where the trainer "
            "runs) or pass --token_file FILE; or serve on 127.0.0.1 (the default) with the trainer on this machine. "
            "docs/vllm.md, 'Across machines'.")


class _NoEndpoint(LookupError):
    pass


class EngineLoop:
    """Runs functions of the engine one at a time, in submission order, in one thread."""

    def __init__(self, llm):
        self.llm = llm
        self._queue: queue.Queue = queue.Queue()
        self._background_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="vllm-engine", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fn, future, background = item
            try:
                future.set_result(fn(self.llm))
            except BaseException as exc:  # noqa: BLE001 - reported to the caller or the next request
                if background:
                    logger.error("vLLM server: a background call failed: %s", exc)
                    self._background_error = exc
                future.set_exception(exc)

    def _put(self, fn: Callable, background: bool) -> Future:
        if self._background_error is not None:
            exc, self._background_error = self._background_error, None
            raise RuntimeError(f"an earlier background call failed: {exc!r}") from exc
        future: Future = Future()
        self._queue.put((fn, future, background))
        return future

    def call(self, fn: Callable) -> Any:
        """``fn(llm)``'s result, after every call submitted before it."""
        return self._put(fn, background=False).result()

    def submit(self, fn: Callable) -> Future:
        """Queue ``fn(llm)`` and return at once (for calls that wait on the trainer, e.g. NCCL broadcasts)."""
        return self._put(fn, background=True)

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)


class VLLMServer:
    """The HTTP server around ``llm`` (a ``vllm.LLM`` started with ``worker_extension_cls=WORKER_EXTENSION``);
    ``world_size`` is its number of workers. Port 0 picks a free port (see :attr:`port`)."""

    def __init__(self, llm, host: str = "127.0.0.1", port: int = 8000, world_size: int = 1, *,
                 token: str | None = None, max_weights_bytes: int = 64 * 2**30):
        check_exposure(host, token)
        self.token = token
        self.max_weights_bytes = max_weights_bytes
        self.engine = EngineLoop(llm)
        self.world_size = world_size
        self.httpd = ThreadingHTTPServer((host, port), _handler(self))
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def serve_forever(self) -> None:
        logger.info("vLLM server listening on http://%s:%d", *self.httpd.server_address[:2])
        self.httpd.serve_forever()

    def start(self) -> VLLMServer:
        """Serve in a background thread."""
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="vllm-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.engine.stop()

    # -- endpoints ----------------------------------------------------------------------------------------
    def handle(self, method: str, path: str, body: bytes) -> Any:
        route = (method, "/" + path.strip("/") + "/")
        if route == ("GET", "/health/"):
            return {"status": "ok"}
        if route == ("GET", "/get_world_size/"):
            return {"world_size": self.world_size}
        if method != "POST":
            raise _NoEndpoint(path)
        if route[1] == "/update_weights/":
            from safetensors.torch import load

            weights = list(load(body).items())
            self.engine.call(lambda llm: llm.collective_rpc(load_weights_on_worker, args=(weights,)))
            return {"loaded": len(weights)}
        payload = json.loads(body) if body else {}
        if route[1] == "/generate/":
            return self.generate(payload["prompt_ids"], payload.get("sampling_params") or {})
        if route[1] == "/init_communicator/":
            args = (payload["host"], int(payload["port"]), int(payload["world_size"]))
            self.engine.submit(lambda llm: llm.collective_rpc("init_communicator", args=args))
        elif route[1] == "/update_named_params/":
            params = [tuple(p) for p in payload["params"]]
            self.engine.submit(lambda llm: llm.collective_rpc("update_named_params", args=(params,)))
        elif route[1] == "/reset_prefix_cache/":
            self.engine.call(lambda llm: llm.reset_prefix_cache())
        elif route[1] == "/close_communicator/":
            self.engine.submit(lambda llm: llm.collective_rpc("close_communicator"))
        else:
            raise _NoEndpoint(path)
        return {"status": "ok"}

    def generate(self, prompt_ids: list[list[int]], sampling_params: dict[str, Any]) -> dict[str, Any]:
        from vllm import SamplingParams

        params = SamplingParams(**sampling_params)
        prompts = [{"prompt_token_ids": list(p)} for p in prompt_ids]
        outputs = self.engine.call(lambda llm: llm.generate(prompts, sampling_params=params, use_tqdm=False))
        return request_output_lists(outputs)


def _handler(server: VLLMServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _refusal(self) -> tuple[int, str] | None:
            """(status, reason) when the request is refused before its body is read, else None."""
            import hmac

            if server.token is not None:
                given = self.headers.get("Authorization", "")
                if not hmac.compare_digest(given.encode(), f"Bearer {server.token}".encode()):
                    return 401, "missing or wrong token (Authorization: Bearer $POSTTRAIN_VLLM_TOKEN)"
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                return 400, "bad Content-Length"
            limit = server.max_weights_bytes if self.path.rstrip("/").endswith("/update_weights") else MAX_JSON_BYTES
            if length < 0 or length > limit:
                return 413, f"request body of {length} bytes is over this endpoint's limit of {limit}"
            return None

        def _respond(self, method: str) -> None:
            refused = self._refusal()
            if refused is not None:
                status, reason = refused
                logger.warning("vLLM server: refused %s %s from %s: %s", method, self.path, self.client_address[0],
                               reason)
                self.close_connection = True
                self._send(status, {"error": reason})
                return
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            try:
                status, result = 200, server.handle(method, self.path, body)
            except _NoEndpoint:
                status, result = 404, {"error": f"no endpoint {method} {self.path}"}
            except Exception as exc:  # noqa: BLE001 - the client gets the error text
                logger.exception("vLLM server: %s %s failed", method, self.path)
                status, result = 500, {"error": f"{type(exc).__name__}: {exc}"}
            self._send(status, result)

        def _send(self, status: int, result: Any) -> None:
            data = json.dumps(result).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802 - http.server's name
            self._respond("GET")

        def do_POST(self):  # noqa: N802
            self._respond("POST")

        def log_message(self, format, *args):  # noqa: A002 - http.server's signature
            logger.debug("vLLM server: " + format, *args)

    return Handler


def build_llm(model: str, *, revision: str | None = None, tensor_parallel_size: int = 1,
              gpu_memory_utilization: float = 0.9, dtype: str = "auto", max_model_len: int | None = None,
              enable_prefix_caching: bool | None = None, enforce_eager: bool | None = None,
              kv_cache_dtype: str = "auto", trust_remote_code: bool = False, model_impl: str = "vllm"):
    """The ``vllm.LLM`` of the server, with the weight-sync worker extension."""
    vllm = require_vllm("posttrain vllm-serve")
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")  # CUDA cannot be used in forked workers
    optional = {k: v for k, v in (("enable_prefix_caching", enable_prefix_caching), ("enforce_eager", enforce_eager))
                if v is not None}
    return vllm.LLM(model=model, revision=revision, tensor_parallel_size=tensor_parallel_size,
                    gpu_memory_utilization=gpu_memory_utilization, dtype=dtype, max_model_len=max_model_len,
                    kv_cache_dtype=kv_cache_dtype, trust_remote_code=trust_remote_code, model_impl=model_impl,
                    worker_extension_cls=WORKER_EXTENSION, **optional, **sampler_logprobs_option())


__all__ = ["EngineLoop", "VLLMServer", "WORKER_EXTENSION", "TOKEN_ENV", "build_llm", "check_exposure", "read_token"]
