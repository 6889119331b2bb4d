"""Running a causal LM's output head on selected positions only.

Most training losses need logits only where a label exists (completion tokens, not prompt or padding).
:func:`select_head_positions` makes the model's ``lm_head`` project just those hidden states, so the
(B, L, V) logits tensor is never built: the model returns logits of shape (1, N, V) for the N selected
positions, in row-major order. It hooks the head module itself, so it works unchanged through DDP,
DeepSpeed, PEFT and quantization wrappers (the forward still goes through the wrapped model).
"""

from __future__ import annotations

import functools
import inspect
import sys
from contextlib import contextmanager

import torch

from .attention import PER_SEQUENCE_SDPA
from .loading import is_vision_config
from .wrappers import base_model, unwrap


def is_vision_model(model) -> bool:
    """True for a vision-language model (its config has a vision tower), through any wrapper."""
    return is_vision_config(getattr(base_model(model), "config", None))


def accepts_videos(model) -> bool:
    """True for a model whose forward takes videos (``pixel_values_videos``), through any wrapper."""
    import inspect

    forward = getattr(base_model(model), "forward", None)
    return forward is not None and "pixel_values_videos" in inspect.signature(forward).parameters


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
    return "flash" in str(impl) or impl == PER_SEQUENCE_SDPA


def packed_sequences_supported(model) -> bool:
    """True when ``model`` keeps sequences laid end to end in one row apart given only ``position_ids`` that restart
    at 0 (no attention mask): flash-attention kernels read them as boundaries, and transformers models that build
    their mask with ``masking_utils.create_causal_mask`` turn them into a block-diagonal causal mask. False for other
    models (remote code, older modeling code) and for models with a vision tower (multi-dimensional positions),
    where sequences in one row would attend to each other."""
    base = base_model(model)
    if getattr(base, "config", None) is None or is_vision_model(base):
        return False
    if varlen_attention(base):
        return True
    return _builds_mask_from_positions(type(base))


@functools.cache
def _builds_mask_from_positions(cls: type) -> bool:
    module = sys.modules.get(cls.__module__)
    try:
        source = inspect.getsource(module) if module is not None else ""
    except (OSError, TypeError):
        return False
    return cls.__module__.startswith("transformers.models.") and "create_causal_mask(" in source


def disable_dropout(model: torch.nn.Module) -> None:
    """Set ``p=0`` on every ``torch.nn.Dropout`` of ``model`` (deterministic scores and log-probs)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
