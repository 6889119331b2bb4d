"""A policy and a separate value model trained together (PPO's actor and critic) as one module.

One module means one optimizer, one DDP/DeepSpeed wrapper and one forward call per micro-batch, so gradients
of both models are synchronised across processes. The value model is a sequence-classification model with one
output (TRL's convention: often initialised from the reward model); :func:`token_values` reads its score head
at *every* position, not only the last one.
"""

from __future__ import annotations

import torch
from torch import nn

from .checkpointing import enable_checkpointing


def token_values(value_model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Per-position values ``(B, L)`` (float32) of a one-output sequence-classification model: its score head
    applied to the backbone's last hidden state at every position."""
    backbone = getattr(value_model, getattr(value_model, "base_model_prefix", ""), None)
    head = getattr(value_model, "score", None) or getattr(value_model, "classifier", None)
    if backbone is None or head is None:
        raise ValueError(f"The value model {type(value_model).__name__} is not a sequence-classification model with a "
                         "backbone and a 'score' head; load it with AutoModelForSequenceClassification(num_labels=1).")
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    return head(hidden).squeeze(-1).float()


class PolicyAndValue(nn.Module):
    """``policy`` (a causal LM) plus ``value_model``. Forward runs the policy and returns its output; when
    :attr:`with_values` is set it also computes the values of every position and leaves them in
    :attr:`last_values` (so a DDP/DeepSpeed-wrapped instance synchronises both models' gradients).
    ``generate``, ``config`` and the output embeddings are the policy's."""

    def __init__(self, policy: nn.Module, value_model: nn.Module):
        super().__init__()
        self.policy = policy
        self.value_model = value_model
        self.with_values = False
        self.last_values: torch.Tensor | None = None

    @property
    def config(self):
        return self.policy.config

    def get_output_embeddings(self):
        return self.policy.get_output_embeddings()

    def generate(self, *args, **kwargs):
        return self.policy.generate(*args, **kwargs)

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        out = self.policy(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        self.last_values = token_values(self.value_model, input_ids, attention_mask) if self.with_values else None
        return out

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None, **kwargs):
        for model in (self.policy, self.value_model):
            enable_checkpointing(model, activation_checkpointing_kwargs, **kwargs)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None, **kwargs):  # transformers 4's name
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)


__all__ = ["PolicyAndValue", "token_values"]
