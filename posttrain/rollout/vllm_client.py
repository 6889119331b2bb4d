"""The trainer's side of ``posttrain vllm-serve`` (:mod:`posttrain.rollout.vllm_server`): HTTP requests with the
standard library, weights by NCCL or in the request bodies.

    client = VLLMClient(host="10.0.0.2", server_port=8000)       # waits for /health/, opens the NCCL group
    out = client.generate([[1, 2, 3]], n=4, max_tokens=32)      # {"prompt_ids", "completion_ids", "logprobs"}
    client.update_named_params(model.named_parameters())         # after an optimizer step
    client.reset_prefix_cache()

Weight transports (``transport``):

* ``"nccl"`` (TRL's): ``/init_communicator/`` makes every vLLM worker join a ``StatelessProcessGroup`` with this
  process as the last rank, over which ``PyNcclCommunicator`` broadcasts each tensor after its name, dtype and
  shape were posted to ``/update_named_params/``. Needs vLLM and a CUDA GPU here, and a NCCL route to the server.
* ``"http"``: tensors travel in the body of ``/update_weights/`` as safetensors bytes (batches of at most
  ``http_chunk_bytes``). Needs neither vLLM nor a GPU in the trainer; slower for large models.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from typing import Any

import torch

logger = logging.getLogger("posttrain")


class VLLMServerError(RuntimeError):
    """The vLLM server could not be reached, or answered a request with an error."""


class VLLMClient:
    """A client of ``posttrain vllm-serve``.

    Args:
        base_url: the server's URL (``http://host:port``); when given, ``host`` and ``server_port`` are ignored.
        host / server_port: the server's address (default ``127.0.0.1`` and ``8000``: the server's own default).
        token: the shared token the server asks for (default: ``$POSTTRAIN_VLLM_TOKEN``), sent with every request.
        group_port: the port of the NCCL weight-sync group (TRL's default 51216).
        connection_timeout: seconds to wait for the server to come up (0: one try).
        transport: ``"nccl"`` or ``"http"`` (see the module docstring).
        request_timeout: seconds a request may take (None: no limit; generation can be long).
    """

    def __init__(self, base_url: str | None = None, host: str = "127.0.0.1", server_port: int = 8000,
                 group_port: int = 51216, connection_timeout: float = 0.0, transport: str = "nccl",
                 request_timeout: float | None = None, http_chunk_bytes: int = 256 * 2**20, token: str | None = None):
        if transport not in ("nccl", "http"):
            raise ValueError(f"Unknown weight transport {transport!r}; valid values: nccl, http.")
        if base_url:
            self.base_url = base_url.rstrip("/")
            self.host = urllib.parse.urlparse(self.base_url).hostname or host
        else:
            self.base_url, self.host = f"http://{host}:{server_port}", host
        self.group_port = group_port
        self.token = token if token is not None else os.environ.get("POSTTRAIN_VLLM_TOKEN") or None
        self.transport = transport
        self.request_timeout = request_timeout
        self.http_chunk_bytes = http_chunk_bytes
        # no proxy: the server is on a local network, and *_proxy variables would otherwise route these requests
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._communicator = None
        self._rank: int | None = None
        self.check_server(connection_timeout)

    # -- HTTP ----------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: bytes | None = None, content_type: str = "application/json",
                 timeout: float | None = None) -> Any:
        url = f"{self.base_url}{path}"
        headers = {"Content-Type": content_type} if body is not None else {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(url, data=body, method=method, headers=headers)
        try:
            with self._opener.open(request, timeout=timeout or self.request_timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")
            raise VLLMServerError(f"vLLM server {url}: HTTP {exc.code}: {detail}") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            raise VLLMServerError(f"vLLM server {url} cannot be reached ({exc}). Start it with `posttrain "
                                  "vllm-serve --model MODEL` and check vllm_server_base_url / vllm_server_host / "
                                  "vllm_server_port.") from exc
        return json.loads(payload) if payload else None

    def _post(self, path: str, payload: dict | None = None) -> Any:
        return self._request("POST", path, json.dumps(payload or {}).encode())

    def check_server(self, total_timeout: float = 0.0, retry_interval: float = 2.0) -> None:
        """Wait until ``/health/`` answers, at most ``total_timeout`` seconds."""
        deadline = time.monotonic() + total_timeout
        while True:
            try:
                self._request("GET", "/health/", timeout=max(retry_interval, 1.0))
                return
            except VLLMServerError as exc:
                if time.monotonic() >= deadline:
                    raise VLLMServerError(f"The vLLM server at {self.base_url} is not up after {total_timeout:g} s. "
                                          "Start it with `posttrain vllm-serve --model MODEL` (docs/vllm.md).") from exc
            logger.info("Waiting for the vLLM server at %s ...", self.base_url)
            time.sleep(retry_interval)

    # -- generation --------------------------------------------------------------------------------------
    def generate(self, prompt_ids: list[list[int]], **sampling_params: Any) -> dict[str, Any]:
        """Completions of token-id prompts: ``{"prompt_ids", "completion_ids", "logprobs"}`` with one entry per
        completion (``n`` consecutive per prompt; ``logprobs`` None unless ``logprobs=0`` was asked).
        ``sampling_params`` are ``vllm.SamplingParams`` keyword arguments (see
        :func:`posttrain.rollout.vllm_backend.sampling_params_kwargs`)."""
        return self._post("/generate/", {"prompt_ids": prompt_ids, "sampling_params": sampling_params})

    def reset_prefix_cache(self) -> None:
        self._post("/reset_prefix_cache/")

    # -- weights -------------------------------------------------------------------------------------------
    def init_communicator(self, device: int | torch.device | None = None) -> None:
        """NCCL transport: open the weight-sync group with the server's workers (no-op for ``"http"``)."""
        if self.transport != "nccl" or self._communicator is not None:
            return
        from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
        from vllm.distributed.utils import StatelessProcessGroup

        workers = int(self._request("GET", "/get_world_size/")["world_size"])
        world_size = workers + 1
        self._rank = workers  # the trainer is the last rank
        # the server's workers join in the background; the group forms when this process joins too
        self._post("/init_communicator/", {"host": "0.0.0.0", "port": self.group_port, "world_size": world_size})
        group = StatelessProcessGroup.create(host=self.host, port=self.group_port, rank=self._rank,
                                             world_size=world_size)
        self._communicator = PyNcclCommunicator(group, device=torch.cuda.current_device() if device is None else device)

    def update_named_params(self, params: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load ``(name, tensor)`` weights (transformers names) into the server's model."""
        params = list(params)
        if not params:
            return
        if self.transport == "nccl":
            self._update_by_nccl(params)
        else:
            self._update_by_http(params)

    def _update_by_nccl(self, params: list[tuple[str, torch.Tensor]]) -> None:
        if self._communicator is None:
            self.init_communicator()
        meta = [(name, str(t.dtype), list(t.shape)) for name, t in params]
        self._post("/update_named_params/", {"params": meta})
        device = torch.device("cuda", torch.cuda.current_device())
        for _, tensor in params:
            self._communicator.broadcast(tensor.detach().to(device).contiguous(), src=self._rank)
        self._communicator.group.barrier()

    def _update_by_http(self, params: list[tuple[str, torch.Tensor]]) -> None:
        from safetensors.torch import save

        batch: dict[str, torch.Tensor] = {}
        size = 0
        for name, tensor in params:
            batch[name] = tensor.detach().to("cpu", copy=True).contiguous()  # the caller's tensor may change
            size += batch[name].numel() * batch[name].element_size()
            if size >= self.http_chunk_bytes:
                self._request("POST", "/update_weights/", save(batch), "application/octet-stream")
                batch, size = {}, 0
        if batch:
            self._request("POST", "/update_weights/", save(batch), "application/octet-stream")

    def close_communicator(self) -> None:
        """Close the NCCL weight-sync group on both sides (an unreachable server is fine: it is gone)."""
        if self._communicator is None:
            return
        self._communicator = None
        try:
            self._post("/close_communicator/")
        except VLLMServerError:
            pass


__all__ = ["VLLMClient", "VLLMServerError"]
