"""Running a causal LM's output head on selected positions only.

Most training losses need logits only where a label exists (completion tokens, not prompt or padding).
:func:`select_head_positions` makes the model's ``lm_head`` project just those hidden states, so the
(B, L, V) logits tensor is never built: the model returns logits of shape (1, N, V) for the N selected
positions, in row-major order. It hooks the head module itself, so it works unchanged through DDP,
DeepSpeed, PEFT and quantization wrappers (the forward still goes through the wrapped model).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


def unwrap(model):
    """The innermost model under DDP/DeepSpeed (``.module``) wrappers."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


def output_head(model) -> torch.nn.Module:
    base = unwrap(model)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if head is None:
        raise ValueError(f"{type(base).__name__} has no output embedding (lm_head) to restrict.")
    return head


@contextmanager
def select_head_positions(model, mask: torch.Tensor):
    """Within the block, ``model(...)`` returns logits only at ``mask`` positions, shaped (1, N, V)."""
    flat = mask.reshape(-1).nonzero(as_tuple=True)[0]

    def pre_hook(_module, args):
        hidden = args[0]
        hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, flat.to(hidden.device)).unsqueeze(0)
        return (hidden, *args[1:])

    handle = output_head(model).register_forward_pre_hook(pre_hook)
    try:
        yield flat
    finally:
        handle.remove()


def varlen_attention(model) -> bool:
    """True when the model's attention kernels take packed sequences natively (flash attention), so a
    padding-free batch is best flattened into one row; sdpa/eager pay the square of the row length instead."""
    impl = getattr(getattr(unwrap(model), "config", None), "_attn_implementation", None) or ""
    return "flash" in str(impl)


def disable_dropout(model: torch.nn.Module) -> None:
    """Set ``p=0`` on every ``torch.nn.Dropout`` of ``model`` (deterministic scores and log-probs)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
