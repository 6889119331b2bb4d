"""Activation checkpointing: turning it on by the right name, and keeping attention's outputs in it.

With checkpointing, every decoder layer's forward runs twice: once in the forward pass (keeping only the layer's
input) and once more in the backward pass. Attention is the layer's slowest part per FLOP on CPUs (the fused
kernel runs far below the matrix-product rate at head size 64; ``docs/performance.md``, "Gradient checkpointing"), and its
outputs are small (the attention output and a log-sum-exp per head and position). :func:`keep_attention_outputs`
makes the recomputation reuse them instead of running attention again (PyTorch's selective checkpointing): the
step is faster (CPU, benchmark model: about +3.5% SFT, +4% DPO) for a few MB of memory per layer, with the same
loss and gradients. The trainers apply it whenever checkpointing is non-reentrant (transformers' default), outside
ZeRO-3 and FSDP (their parameter gathers inside the checkpointed region cannot be replayed op by op), and the
user has given no ``context_fn`` of their own.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

_ATTENTION_OP_NAMES = ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
                       "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention")
ATTENTION_OPS = frozenset(getattr(torch.ops.aten, name).default for name in _ATTENTION_OP_NAMES
                          if hasattr(torch.ops.aten, name))
"""The fused attention kernels whose outputs selective checkpointing keeps (what ``F.scaled_dot_product_attention``
dispatches to on CPU and CUDA)."""


def enable_checkpointing(model: nn.Module, checkpoint_kwargs: dict | None = None, **kwargs) -> None:
    """Turn on activation checkpointing of a transformers model by the name its version has: transformers 5's
    ``activation_checkpointing_enable`` (the old ``gradient_checkpointing_enable`` warns there), else transformers
    4's. Wrappers (value heads, the policy-and-value pair) define both names and forward here, so the Trainer finds
    the new one and never falls back to the deprecated one."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=checkpoint_kwargs, **kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpoint_kwargs, **kwargs)


def _keep_attention(ctx, op, *args, **kwargs):
    from torch.utils.checkpoint import CheckpointPolicy

    return CheckpointPolicy.MUST_SAVE if op in ATTENTION_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def attention_saving_contexts():
    """``context_fn`` for ``torch.utils.checkpoint.checkpoint``: keep the fused attention kernels' outputs, recompute
    everything else."""
    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    return create_selective_checkpoint_contexts(_keep_attention)


def keep_attention_outputs(model: nn.Module) -> int:
    """Make every checkpointed layer of ``model`` (after transformers turned checkpointing on) keep its attention
    outputs for the recomputation. Layers checkpointed with ``use_reentrant=True`` (which has no selective mode) or
    with a ``context_fn`` of the user's are left as they are. Returns the number of layers changed."""
    changed = 0
    for module in model.modules():
        func = getattr(module, "_gradient_checkpointing_func", None)
        if not getattr(module, "gradient_checkpointing", False) or not isinstance(func, functools.partial):
            continue
        if func.keywords.get("use_reentrant", True) or "context_fn" in func.keywords:
            continue
        module._gradient_checkpointing_func = functools.partial(func.func, *func.args, **func.keywords,
                                                                context_fn=attention_saving_contexts)
        changed += 1
    return changed


__all__ = ["ATTENTION_OPS", "attention_saving_contexts", "enable_checkpointing", "keep_attention_outputs"]
