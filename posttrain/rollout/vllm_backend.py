"""vLLM rollout backends (``use_vllm=True``): generation with vLLM, weight sync after optimizer steps.

vLLM is an optional dependency (``pip install posttrain[vllm]``) and needs a CUDA GPU; nothing here imports it
at module level, so this module loads without it and :func:`require_vllm` names the fix when it is missing.

Two modes, TRL's names (``vllm_mode``):

* ``"colocate"`` — :class:`VLLMColocateBackend`: a ``vllm.LLM`` in every training process, sharing its GPU
  (``vllm_gpu_memory_utilization``), started with vLLM's ``external_launcher`` executor so that a tensor-parallel
  group (``vllm_tensor_parallel_size``) is made of training processes. Weights are loaded into the local engine
  with ``LLM.collective_rpc`` (:func:`load_weights_on_worker`: the worker's ``model_runner.model.load_weights``),
  then the prefix cache is reset. ``vllm_enable_sleep_mode`` puts the engine to sleep (level 2: weights and KV
  cache released) between generations; its weights are then re-sent before every generation.
* ``"server"`` — :class:`VLLMServerBackend`: a separate ``posttrain vllm-serve`` process
  (:mod:`posttrain.rollout.vllm_server`) on other GPUs, reached over HTTP with
  :class:`~posttrain.rollout.vllm_client.VLLMClient`. Only the main training process talks to it: it gathers
  every process's prompts, generates, and scatters the completions back; after an optimizer step it sends the
  weights, by NCCL (vLLM's ``StatelessProcessGroup`` + ``PyNcclCommunicator``, a broadcast from the trainer to
  every vLLM worker) or, with ``vllm_weight_sync_transport="http"``, in the HTTP request bodies (no NCCL: slower,
  but works without a GPU on the trainer side or a NCCL route between the machines).

Weights (:func:`weight_groups`) are sent with the names of the plain transformers model, which vLLM's
``load_weights`` maps to its own layout (e.g. fused ``qkv_proj``). Under PEFT the adapter is merged first, the
merged base weights are sent under the base model's names (``base_model.model.`` and ``.base_layer`` stripped,
adapter weights skipped) and the adapter is unmerged again. Under DeepSpeed ZeRO-3 the parameters are gathered
one module at a time (PEFT: the whole model, which merging needs).

Sampling (:func:`sampling_params_kwargs`): ``temperature``, ``top_p``, ``top_k`` (0/None: off, vLLM's -1),
``min_p`` (None: 0), ``repetition_penalty``, ``max_tokens``, ``seed``, ``n``, and ``logprobs=0`` (the sampled
token's log-prob) when the trainer needs the sampler's log-probs; ``generation_kwargs`` are further
``SamplingParams`` options. Completions are cut after the first EOS, as :func:`posttrain.rollout.generate` does.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch

from ..models.wrappers import is_peft_model, unwrap
from ..models.sharding import gathered_parameters, is_zero3_partitioned
from .generation import Generations

logger = logging.getLogger("posttrain")

VLLM_MODES = ("server", "colocate")
WEIGHT_SYNC_TRANSPORTS = ("nccl", "http")
INSTALL_HINT = "pip install 'posttrain[vllm]' (vLLM needs a CUDA GPU; see docs/vllm.md)"


def require_vllm(what: str = "use_vllm=True"):
    """The ``vllm`` module, or an ImportError that says how to install it."""
    try:
        import vllm
    except ImportError as exc:
        raise ImportError(f"{what} needs vLLM, which is not installed: {INSTALL_HINT}.") from exc
    return vllm


def engine_supports(option: str) -> bool:
    """Whether the installed vLLM's ``EngineArgs`` (the ``LLM(...)`` keyword arguments) has ``option``."""
    try:
        from vllm.engine.arg_utils import EngineArgs
    except ImportError:
        return False
    return dataclasses.is_dataclass(EngineArgs) and option in {f.name for f in dataclasses.fields(EngineArgs)}


def sampler_logprobs_option() -> dict[str, str]:
    """``logprobs_mode="processed_logprobs"`` when this vLLM has the option: log-probs of the distribution sampled
    from (after temperature, top-k/top-p), like :func:`posttrain.rollout.generate`'s, instead of the raw model's."""
    if engine_supports("logprobs_mode"):
        return {"logprobs_mode": "processed_logprobs"}
    logger.warning("This vLLM has no logprobs_mode option: its sampling log-probs are the raw model's (before "
                   "temperature), so the vLLM importance-sampling correction compares different distributions "
                   "when temperature != 1. A newer vLLM has the option.")
    return {}


# =============================================================================================
# sampling options and results
# =============================================================================================


def sampling_params_kwargs(*, num_return_sequences: int = 1, max_new_tokens: int = 32, do_sample: bool = True,
                           temperature: float = 1.0, top_p: float = 1.0, top_k: int | None = 0,
                           min_p: float | None = None, repetition_penalty: float = 1.0, seed: int | None = None,
                           return_logprobs: bool = False,
                           generation_kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Keyword arguments of ``vllm.SamplingParams`` for :func:`posttrain.rollout.generate`'s sampling options
    (JSON-serialisable: the server mode sends them as they are). ``do_sample=False`` is greedy (temperature 0)."""
    kwargs: dict[str, Any] = dict(
        n=num_return_sequences, max_tokens=max_new_tokens, repetition_penalty=repetition_penalty, seed=seed,
        temperature=temperature if do_sample else 0.0, top_p=top_p if do_sample else 1.0,
        top_k=top_k if do_sample and top_k else -1, min_p=(min_p or 0.0) if do_sample else 0.0,
        logprobs=0 if return_logprobs else None)
    kwargs.update(generation_kwargs or {})
    return kwargs


def request_output_lists(outputs) -> dict[str, list]:
    """``prompt_ids`` (one per completion), ``completion_ids`` and ``logprobs`` (None when not requested) from
    ``vllm.RequestOutput`` objects, completions of a prompt in sample order."""
    prompt_ids, completion_ids, logprobs = [], [], []
    for request in outputs:
        for sample in sorted(request.outputs, key=lambda o: o.index):
            ids = list(sample.token_ids)
            prompt_ids.append(list(request.prompt_token_ids))
            completion_ids.append(ids)
            if sample.logprobs is None:
                logprobs = None
            elif logprobs is not None:
                logprobs.append([float(step[tok].logprob) for tok, step in zip(ids, sample.logprobs)])
    return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": logprobs}


def to_generations(prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]],
                   logprobs: Sequence[Sequence[float]] | None, tokenizer) -> Generations:
    """:class:`~posttrain.rollout.Generations` from a sampler's token lists: each completion is cut after its
    first EOS (kept in the ids, out of the text), its log-probs cut with it."""
    eos = tokenizer.eos_token_id
    cut_ids, cut_logprobs = [], [] if logprobs is not None else None
    for i, ids in enumerate(completion_ids):
        ids = list(ids)
        if eos in ids:
            ids = ids[: ids.index(eos) + 1]
        cut_ids.append(ids)
        if cut_logprobs is not None:
            cut_logprobs.append([float(x) for x in logprobs[i][: len(ids)]])
    texts = tokenizer.batch_decode(cut_ids, skip_special_tokens=True)
    return Generations(prompt_ids=[list(p) for p in prompt_ids], completion_ids=cut_ids, texts=texts,
                       logprobs=cut_logprobs)


# =============================================================================================
# weights, with the names vLLM expects
# =============================================================================================


def vllm_param_name(name: str, adapter_prefix: str = "lora_") -> str | None:
    """The transformers name of a parameter of a PEFT model after merging (None: an adapter weight, not sent):
    ``base_model.model.`` and ``.base_layer`` stripped, ``modules_to_save`` copies under the module's name."""
    name = name.removeprefix("base_model.model.").replace(".base_layer", "")
    if adapter_prefix in name or ".original_module." in name:
        return None
    return re.sub(r"\.modules_to_save\.[^.]+\.", ".", name)


def weight_groups(model) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """The policy's weights for vLLM, as groups of ``(name, tensor)``; a group's tensors are valid only until the
    next group is asked for (ZeRO-3 re-partitions them, PEFT unmerges). One group unless ZeRO-3 partitions the
    model (then one per module that holds parameters). See the module docstring."""
    base = unwrap(model)
    if is_peft_model(base):
        prefix = getattr(base.base_model, "prefix", "lora_")
        with gathered_parameters(base):  # ZeRO-3: merging needs whole weights
            base.merge_adapter()
            try:
                yield [(new, p.data) for n, p in base.named_parameters()
                       if (new := vllm_param_name(n, prefix)) is not None]
            finally:
                base.unmerge_adapter()
    elif not is_zero3_partitioned(base):
        yield [(n, p.data) for n, p in base.named_parameters()]
    else:
        seen: set[int] = set()
        for module_name, module in base.named_modules():
            own = [(n, p) for n, p in module.named_parameters(recurse=False) if id(p) not in seen]
            if not own:
                continue
            seen.update(id(p) for _, p in own)
            # a leaf module gathers exactly its own parameters; a module with children and parameters of its own
            # (rare) gathers its children too
            with gathered_parameters(module):
                yield [(f"{module_name}.{n}" if module_name else n, p.data) for n, p in own]


def load_weights_on_worker(worker, weights: list[tuple[str, torch.Tensor]]) -> int:
    """Run inside a vLLM worker (``LLM.collective_rpc(load_weights_on_worker, args=(weights,))``): load
    transformers-named weights into the worker's model (vLLM maps names and shards for tensor parallelism)."""
    worker.model_runner.model.load_weights(weights=weights)
    return len(weights)


def dtype_from_name(name: str) -> torch.dtype:
    """``"torch.bfloat16"`` or ``"bfloat16"`` -> ``torch.bfloat16``."""
    dtype = getattr(torch, name.rsplit(".", 1)[-1], None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"Unknown tensor dtype {name!r}.")
    return dtype


class WeightSyncWorkerExtension:
    """Methods mixed into every vLLM worker of ``posttrain vllm-serve`` (``worker_extension_cls``) for the NCCL
    weight sync: a process group of the vLLM workers (ranks ``0..W-1``) and the trainer (rank ``W``), over which
    the trainer broadcasts each tensor. ``self.device`` and ``self.model_runner`` are the worker's."""

    _communicator = None
    _client_rank: int | None = None

    def init_communicator(self, host: str, port: int, world_size: int) -> None:
        from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
        from vllm.distributed.parallel_state import get_world_group
        from vllm.distributed.utils import StatelessProcessGroup

        if self._communicator is not None:
            raise RuntimeError("The weight-sync communicator is already open; close it first.")
        group = StatelessProcessGroup.create(host=host, port=port, rank=get_world_group().rank, world_size=world_size)
        self._communicator = PyNcclCommunicator(group, device=self.device)
        self._client_rank = world_size - 1

    def update_named_params(self, params: list[tuple[str, str, list[int]]]) -> None:
        """Receive ``(name, dtype, shape)`` tensors, in order, from the trainer's broadcasts and load each."""
        if self._communicator is None:
            raise RuntimeError("No weight-sync communicator: call init_communicator first.")
        for name, dtype, shape in params:
            tensor = torch.empty(tuple(shape), dtype=dtype_from_name(dtype), device=self.device)
            self._communicator.broadcast(tensor, src=self._client_rank)
            self.model_runner.model.load_weights(weights=[(name, tensor)])
        self._communicator.group.barrier()

    def close_communicator(self) -> None:
        self._communicator = None
        self._client_rank = None


# =============================================================================================
# backends
# =============================================================================================


def model_path(model) -> str:
    """The folder or hub id vLLM loads the policy's architecture from (its weights are replaced at the first
    weight sync)."""
    path = getattr(unwrap(model), "name_or_path", None)
    if not path:
        raise ValueError("use_vllm=True needs a model loaded from a folder or hub id (vLLM loads it by name); this "
                         "model has no name_or_path. Save it with save_pretrained and pass the folder.")
    return str(path)


def max_model_len(args) -> int | None:
    if getattr(args, "vllm_max_model_length", None):
        return args.vllm_max_model_length
    return args.max_prompt_length + args.max_completion_length if args.max_prompt_length else None


class VLLMColocateBackend:
    """``vllm_mode="colocate"``: a ``vllm.LLM`` in this training process (see the module docstring)."""

    def __init__(self, args, get_model: Callable[[], Any], tokenizer, accelerator=None):
        vllm = require_vllm("use_vllm=True with vllm_mode='colocate'")
        self.tokenizer = tokenizer
        self.sleep_mode = bool(args.vllm_enable_sleep_mode)
        self.tp = int(args.vllm_tensor_parallel_size)
        rank = accelerator.process_index if accelerator is not None else 0
        world = accelerator.num_processes if accelerator is not None else 1
        local = accelerator.local_process_index if accelerator is not None else 0
        if world % self.tp != 0:
            raise ValueError(f"vllm_tensor_parallel_size={self.tp} must divide the number of training processes "
                             f"({world}) in colocate mode.")
        self._tp_group = None
        if self.tp > 1:
            self._tp_group, _ = torch.distributed.new_subgroups_by_enumeration(
                [list(range(i * self.tp, (i + 1) * self.tp)) for i in range(world // self.tp)])
        # vLLM's external launcher joins the training processes' torch.distributed world
        for key, value in (("RANK", rank), ("LOCAL_RANK", local), ("WORLD_SIZE", world),
                           ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", _free_port()),
                           ("VLLM_ENABLE_V1_MULTIPROCESSING", 0)):
            os.environ.setdefault(key, str(value))
        self.llm = vllm.LLM(
            model=model_path(get_model()), tensor_parallel_size=self.tp,
            gpu_memory_utilization=args.vllm_gpu_memory_utilization, max_model_len=max_model_len(args),
            max_num_seqs=args.per_device_train_batch_size * args.completions_per_row * args.steps_per_generation
            * self.tp,
            distributed_executor_backend="external_launcher", seed=rank // self.tp,
            enable_sleep_mode=self.sleep_mode, model_impl=args.vllm_model_impl, **sampler_logprobs_option())
        self._version: int | None = None
        self._asleep: set[str] = set()
        if self.sleep_mode:
            self._sleep()

    def _sleep(self) -> None:
        self.llm.sleep(level=2)  # weights and KV cache released: the weights must be sent again
        self._asleep = {"weights", "kv_cache"}
        self._version = None

    def _wake(self, tag: str) -> None:
        if tag in self._asleep:
            self.llm.wake_up(tags=[tag])
            self._asleep.discard(tag)

    def sync_weights(self, model, version: int) -> None:
        if version == self._version:
            return
        self._wake("weights")
        for group in weight_groups(model):
            self.llm.collective_rpc(load_weights_on_worker, args=(group,))
        self.llm.reset_prefix_cache()
        self._version = version

    def generate(self, prompt_ids, *, num_return_sequences: int = 1, **sampling) -> Generations:
        from vllm import SamplingParams

        prompts, offset = [list(p) for p in prompt_ids], 0
        if self._tp_group is not None:  # every rank of a tensor-parallel group must feed the engine the same prompts
            parts: list = [None] * self.tp
            torch.distributed.all_gather_object(parts, prompts, group=self._tp_group)
            offset = sum(len(p) for p in parts[: torch.distributed.get_rank(self._tp_group)])
            prompts = [p for part in parts for p in part]
        self._wake("weights")
        self._wake("kv_cache")
        params = SamplingParams(**sampling_params_kwargs(num_return_sequences=num_return_sequences, **sampling))
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], sampling_params=params,
                                    use_tqdm=False)
        if self.sleep_mode:
            self._sleep()
        lists = request_output_lists(outputs)
        k, n = num_return_sequences, len(prompt_ids)
        mine = slice(offset * k, (offset + n) * k)
        logprobs = lists["logprobs"][mine] if lists["logprobs"] is not None else None
        return to_generations(lists["prompt_ids"][mine], lists["completion_ids"][mine], logprobs, self.tokenizer)

    def close(self) -> None:
        return None


class VLLMServerBackend:
    """``vllm_mode="server"``: completions from a ``posttrain vllm-serve`` server (see the module docstring)."""

    def __init__(self, args, get_model: Callable[[], Any], tokenizer, accelerator=None):
        from .vllm_client import VLLMClient

        self.tokenizer = tokenizer
        self.accelerator = accelerator
        self.transport = args.vllm_weight_sync_transport
        if self.transport == "nccl":
            require_vllm("use_vllm=True with vllm_mode='server' and NCCL weight sync (vllm_weight_sync_transport="
                         "'http' needs no vLLM in the trainer)")
        self.is_main = accelerator is None or accelerator.is_main_process
        self.client = None
        if self.is_main:
            self.client = VLLMClient(base_url=args.vllm_server_base_url, host=args.vllm_server_host,
                                     server_port=args.vllm_server_port, group_port=args.vllm_group_port,
                                     connection_timeout=args.vllm_server_timeout, transport=self.transport)
            self.client.init_communicator()
            import atexit

            atexit.register(self.close)
        self._version: int | None = None

    def _num_processes(self) -> int:
        return self.accelerator.num_processes if self.accelerator is not None else 1

    def sync_weights(self, model, version: int) -> None:
        if version == self._version:
            return
        for group in weight_groups(model):  # every process: ZeRO-3 gathers are collective
            if self.is_main:
                self.client.update_named_params(group)
        if self.is_main:
            self.client.reset_prefix_cache()
        self._version = version

    def generate(self, prompt_ids, *, num_return_sequences: int = 1, **sampling) -> Generations:
        prompts = [list(p) for p in prompt_ids]
        parts = [prompts]
        if self._num_processes() > 1:
            from accelerate.utils import gather_object

            parts = gather_object([prompts])
        result = [None]
        if self.is_main:
            kwargs = sampling_params_kwargs(num_return_sequences=num_return_sequences, **sampling)
            result = [self.client.generate([p for part in parts for p in part], **kwargs)]
        if self._num_processes() > 1:
            from accelerate.utils import broadcast_object_list

            result = broadcast_object_list(result, from_process=0)
        lists = result[0]
        k, start = num_return_sequences, sum(len(p) for p in parts[: self._process_index()])
        mine = slice(start * k, (start + len(prompts)) * k)
        logprobs = lists["logprobs"][mine] if lists["logprobs"] is not None else None
        return to_generations(lists["prompt_ids"][mine], lists["completion_ids"][mine], logprobs, self.tokenizer)

    def _process_index(self) -> int:
        return self.accelerator.process_index if self.accelerator is not None else 0

    def close(self) -> None:
        if self.client is not None:
            self.client.close_communicator()


def make_vllm_backend(args, get_model: Callable[[], Any], tokenizer, accelerator=None):
    """The vLLM backend of ``args.vllm_mode``."""
    if args.vllm_mode == "colocate":
        return VLLMColocateBackend(args, get_model, tokenizer, accelerator)
    if args.vllm_mode == "server":
        return VLLMServerBackend(args, get_model, tokenizer, accelerator)
    raise ValueError(f"Unknown vllm_mode {args.vllm_mode!r}; valid values: {', '.join(VLLM_MODES)}.")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


__all__ = ["INSTALL_HINT", "VLLM_MODES", "WEIGHT_SYNC_TRANSPORTS", "VLLMColocateBackend", "VLLMServerBackend",
           "WeightSyncWorkerExtension", "load_weights_on_worker", "make_vllm_backend", "request_output_lists",
           "require_vllm", "sampling_params_kwargs", "to_generations", "vllm_param_name", "weight_groups"]
