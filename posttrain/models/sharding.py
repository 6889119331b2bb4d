"""Models that are sharded across processes: frozen copies, evaluation-only preparation, gathered parameters.

Under DeepSpeed ZeRO-3 every process holds only a slice of each parameter (``param.ds_tensor``); the full
tensor exists only while a DeepSpeed engine's hooks gather it for a forward pass. A frozen model (a reference
policy, a teacher, a reward model) therefore has to run inside a DeepSpeed engine of its own too, and copying
or reading a partitioned model needs its parameters gathered first. Three helpers do this once for every
trainer:

* :func:`frozen_copy` — a separate copy of a model's weights (a default reference policy). Under ZeRO-3 the
  copy is built partitioned and filled one gathered parameter at a time, so no process ever holds two full
  models.
* :func:`prepare_frozen` — make an evaluation-only model ready for the current set-up: a DeepSpeed inference
  engine (ZeRO-3: partitioned like the trained model, parameters offloaded to CPU when the trained model's
  are; ZeRO-1/2: stage 0, because those stages shard only gradients and optimizer state, which a frozen model
  does not have), or the process's device otherwise.
* :func:`gathered_parameters` — a context in which a ZeRO-3 model holds its full parameters (e.g. for a
  generation loop that calls the model many times); a no-op in every other set-up.
"""

from __future__ import annotations

import atexit
import copy
import re
from contextlib import nullcontext

import torch


def is_zero3_partitioned(model: torch.nn.Module) -> bool:
    """True when ``model``'s parameters are DeepSpeed ZeRO-3 partitions (loaded under ``zero.Init`` or wrapped
    by a stage-3 engine)."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


def gathered_parameters(model: torch.nn.Module, modifier_rank: int | None = None):
    """A context in which the ZeRO-3 parameters of ``model`` are whole on every process (no-op otherwise).

    With ``modifier_rank=r``, changes process ``r`` makes inside the block are broadcast to every process and
    re-partitioned on exit (DeepSpeed's ``GatheredParameters`` semantics)."""
    params = [p for p in model.parameters() if hasattr(p, "ds_id")]
    if not params:
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank)


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A separate copy of ``model`` with the same weights (``copy.deepcopy`` unless ``model`` is ZeRO-3
    partitioned; then a partitioned twin filled one gathered parameter at a time)."""
    if not is_zero3_partitioned(model):
        return copy.deepcopy(model)
    if not hasattr(model, "_from_config"):
        raise ValueError(f"Cannot copy a ZeRO-3 partitioned {type(model).__name__}: pass the reference model "
                         "explicitly (ref_model=<name or path>), so it is loaded partitioned.")
    import deepspeed

    # transformers builds the twin under zero.Init (already partitioned) while a ZeRO-3 config is active
    dtype = next(model.parameters()).dtype
    twin = type(model)._from_config(copy.deepcopy(model.config), dtype=dtype)
    src = dict(model.named_parameters())
    dst = dict(twin.named_parameters())
    if src.keys() != dst.keys():
        raise ValueError(f"Cannot copy a ZeRO-3 partitioned {type(model).__name__}: its parameters differ from a "
                         "fresh model built from its config. Pass ref_model=<name or path> instead.")
    for name, p_dst in dst.items():
        p_src = src[name]
        with deepspeed.zero.GatheredParameters([p_src, p_dst], modifier_rank=0):
            if _rank() == 0:
                p_dst.data.copy_(p_src.data)
    for (_, b_dst), (_, b_src) in zip(twin.named_buffers(), model.named_buffers()):
        b_dst.data.copy_(b_src.data)
    twin.train(model.training)
    return twin


def _resolved(value, default):
    return default if value == "auto" or value is None else value


def deepspeed_inference_config(ds_config: dict, mixed_precision: str, hidden_size: int | None) -> dict:
    """The DeepSpeed config of an evaluation-only engine next to a trained model using ``ds_config``."""
    zero = ds_config.get("zero_optimization", {}) or {}
    stage = int(_resolved(zero.get("stage"), 0))
    micro = _resolved(ds_config.get("train_micro_batch_size_per_gpu"), 1)
    config: dict = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": 1,
        "bf16": {"enabled": mixed_precision == "bf16"},
        "fp16": {"enabled": mixed_precision == "fp16"},
        "steps_per_print": 10**12,
        "wall_clock_breakdown": False,
    }
    if stage != 3:
        config["zero_optimization"] = {"stage": 0}
        return config
    inference = {"stage": 3}
    for key in ("offload_param", "stage3_max_live_parameters", "stage3_max_reuse_distance"):
        if zero.get(key) not in (None, "auto"):
            inference[key] = zero[key]
    # transformers' "auto" values of the size-dependent buckets, from the model's hidden size
    sizes = {"reduce_bucket_size": (lambda h: h * h), "stage3_prefetch_bucket_size": (lambda h: int(0.9 * h * h)),
             "stage3_param_persistence_threshold": (lambda h: 10 * h)}
    for key, rule in sizes.items():
        value = zero.get(key)
        if value not in (None, "auto"):
            inference[key] = value
        elif hidden_size:
            inference[key] = rule(hidden_size)
    config["zero_optimization"] = inference
    return config


def _hidden_size(model) -> int | None:
    cfg = getattr(model, "config", None)
    size = getattr(cfg, "hidden_size", None)
    if size is None and getattr(cfg, "hidden_sizes", None):
        size = max(cfg.hidden_sizes)
    return size


def prepare_frozen(model: torch.nn.Module, accelerator) -> torch.nn.Module:
    """Make a frozen ``model`` (``requires_grad`` already off) ready for evaluation in ``accelerator``'s set-up.

    DeepSpeed: wrapped in a DeepSpeed inference engine (see the module docstring). FSDP: left whole on every
    process (see docs/distributed.md). Otherwise: moved to the process's device. Returns the model to keep."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        import deepspeed

        plugin = accelerator.state.deepspeed_plugin
        config = deepspeed_inference_config(plugin.deepspeed_config, str(accelerator.mixed_precision),
                                            _hidden_size(model))
        engine, *_ = deepspeed.initialize(model=model, config=config)
        engine.eval()
        return engine
    if accelerator.distributed_type == DistributedType.FSDP:
        return accelerator.prepare_model(model, evaluation_mode=True)
    return model.to(accelerator.device)


def check_launch(accelerator) -> str | None:
    """A warning when the launcher asked for FSDP but accelerate did not set it up (CPU processes: accelerate
    enables FSDP only for accelerator devices and runs CPU processes as plain DDP); None when all is as asked."""
    import os

    from accelerate.utils import DistributedType

    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and \
            accelerator.distributed_type != DistributedType.FSDP:
        return (f"The accelerate config asks for FSDP, but accelerate set up {accelerator.distributed_type.value} "
                f"on {accelerator.device.type}: FSDP needs GPUs (or other accelerators), so every process holds the "
                "whole model. To shard a model across CPU processes use DeepSpeed ZeRO-3 with DS_ACCELERATOR=cpu "
                "(docs/distributed.md).")
    return None


__all__ = ["check_launch", "create_reference_model", "deepspeed_inference_config", "frozen_copy", "gathered_parameters",
           "is_zero3_partitioned", "prepare_frozen"]


_exit_hook_registered = False
# How long the exit hook lets other threads take the GIL (measured: 0.1 s gave 0 aborts in 40 two-process DDP runs
# that aborted in 7 of 50 without it; twice that for loaded machines).
EXIT_GRACE_SECONDS = 0.2


def _leave_process_group() -> None:
    import gc
    import time

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    gc.collect()
    time.sleep(EXIT_GRACE_SECONDS)


def destroy_process_group_at_exit() -> None:
    """At interpreter exit, destroy the default process group and let gloo's worker threads finish (an ``atexit``
    hook, registered once).

    A torchrun (gloo) worker can abort after its script has finished and written everything ("terminate called
    without an active exception", SIGABRT), and torchrun then reports the run as failed. A gloo worker thread frees
    each finished collective's work object, whose saved thread-local state holds Python objects, so the thread
    takes the GIL; if the main thread has begun interpreter finalization by then, Python ends that thread with
    ``pthread_exit``, whose unwinding through C++ code calls ``std::terminate`` (seen in a gdb backtrace: the
    ``pt_gloo_runloop`` thread in ``~AsyncAllreduceWork`` -> ``SafePyObject`` decref -> ``take_gil`` ->
    ``PyThread_exit_thread``). ``atexit`` hooks run while the interpreter is still whole, so this one destroys the
    default group (freeing it and joining its threads when nothing else holds it) and then sleeps briefly, which
    releases the GIL to any worker thread still freeing a work object of a group that something else keeps alive
    (a ``DistributedDataParallel`` wrapper held by a trainer that lives to the end of the script)."""
    global _exit_hook_registered
    if not _exit_hook_registered:
        atexit.register(_leave_process_group)
        _exit_hook_registered = True


def create_reference_model(model: torch.nn.Module, num_shared_layers: int | None = None,
                           pattern: str | None = None) -> torch.nn.Module:
    """A frozen copy of ``model`` in evaluation mode (TRL's ``create_reference_model``; the copy as
    :func:`frozen_copy` makes it, ZeRO-3 included). With ``num_shared_layers=n`` the parameters before layer ``n``
    (the embeddings and layers ``0 .. n-1``) are shared, not copied: the copy points at the same storage and they
    are frozen in ``model`` too, so the reference stays what it was while ``model`` trains its other layers.
    ``pattern`` names where layer ``n`` starts (e.g. ``"transformer.h.{layer}"``); by default the first parameter
    under a ``layers``/``h``/``blocks`` container's entry ``n``."""
    if num_shared_layers is not None and is_zero3_partitioned(model):
        raise ValueError("create_reference_model(num_shared_layers=...) cannot share ZeRO-3 partitioned parameters; "
                         "leave num_shared_layers unset for a full frozen copy.")
    reference = frozen_copy(model).eval()
    reference.requires_grad_(False)
    if num_shared_layers is None:
        return reference
    names = [name for name, _ in model.named_parameters()]
    if pattern is not None:
        target = pattern.format(layer=num_shared_layers)
        first = next((i for i, name in enumerate(names) if target in name), None)
    else:
        start = re.compile(rf"(^|\.)(layers|h|blocks|block|layer)\.{num_shared_layers}\.")
        first = next((i for i, name in enumerate(names) if start.search(name)), None)
    if first is None:
        raise ValueError(f"No layer {num_shared_layers} found in {type(model).__name__}'s parameters; pass `pattern` "
                         "(e.g. 'model.layers.{layer}') naming where a layer's parameters start.")
    for name in names[:first]:
        param = model.get_parameter(name)
        param.requires_grad_(False)
        reference.get_parameter(name).data = param.data
    return reference
