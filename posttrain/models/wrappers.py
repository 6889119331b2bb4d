"""What sits around a model: DDP/DeepSpeed wrappers (``.module``), a peft adapter, and its train/eval mode."""

from __future__ import annotations

from contextlib import contextmanager

import torch


def unwrap(model):
    """The innermost model under DDP/DeepSpeed (``.module``) wrappers."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


def is_peft_model(model) -> bool:
    """True when ``model`` (under DDP/DeepSpeed wrappers) is a peft ``PeftModel``."""
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        return False
    return isinstance(unwrap(model), PeftModel)


@contextmanager
def eval_mode(model):
    """Temporarily put ``model`` in eval mode (dropout off)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def base_model(model):
    """The transformers model under DDP/DeepSpeed and PEFT wrappers."""
    base = unwrap(model)
    return base.get_base_model() if hasattr(base, "get_base_model") else base
