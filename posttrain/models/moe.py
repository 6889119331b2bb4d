"""Mixture-of-Experts models: the router's load-balancing loss (Switch Transformer, Fedus et al. 2021, eq. 4-6, as
each transformers MoE family computes it in ``load_balancing_loss_func``).

A MoE model (its text config has ``output_router_logits``) computes the auxiliary loss in its own forward when that
flag is on, and adds ``router_aux_loss_coef`` times it to the loss only when it is given ``labels``. The trainers
compute their losses from the log-probs of the one log-prob path instead, so they collect the model's ``aux_loss``
here and add it themselves (:func:`collect_aux_loss`); the trainer decides the weight and the reduction.
"""

from __future__ import annotations

import contextlib

import torch

from .wrappers import unwrap


def _text_config(model):
    config = unwrap(model).config
    return getattr(config, "text_config", None) or config


def is_moe(model) -> bool:
    """Whether ``model`` routes tokens to experts and can return a load-balancing loss (its text config has
    ``output_router_logits``)."""
    return getattr(_text_config(model), "output_router_logits", None) is not None


def enable_aux_loss(model, coef: float) -> bool:
    """Turn the load-balancing loss of a MoE ``model`` on (``coef != 0``) or off, whatever it was loaded with, and
    record ``coef`` in its config (as TRL does). Returns whether it is on; False for a dense model."""
    if not is_moe(model):
        return False
    config = _text_config(model)
    config.output_router_logits = coef != 0.0
    config.router_aux_loss_coef = coef
    for module in unwrap(model).modules():  # the causal LM keeps its own copy, for the loss it computes from labels
        if "router_aux_loss_coef" in vars(module):
            module.router_aux_loss_coef = coef
    return coef != 0.0


@contextlib.contextmanager
def collect_aux_loss(model, enabled: bool = True):
    """Within the region, the ``aux_loss`` of every forward of ``model``'s outermost module (a list; empty when
    ``enabled`` is False or the model returned none)."""
    found: list[torch.Tensor] = []
    if not enabled:
        yield found
        return

    def hook(module, args, output):
        aux = getattr(output, "aux_loss", None)
        if aux is not None:
            found.append(aux)

    handle = unwrap(model).register_forward_hook(hook)
    try:
        yield found
    finally:
        handle.remove()


__all__ = ["is_moe", "enable_aux_loss", "collect_aux_loss"]
