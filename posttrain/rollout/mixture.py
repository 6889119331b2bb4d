"""Sampling from the geometric mixture of a policy and a reference policy (Nash-MD's opponent).

:func:`posttrain.rollout.generate` takes ``mixture_ref=`` and ``mixture_coef=``: it then adds a
:class:`GeometricMixtureLogitsProcessor` to the one generation loop, which replaces the policy's next-token logits
by the log-probabilities of the token-level geometric mixture
``softmax((1 - c) log pi + c log pi_ref)`` (:func:`posttrain.losses.online_preference.geometric_mixture_logits`). The
reference runs alongside the policy with a KV cache of its own, one token per step. Temperature, top-k, top-p and
min-p apply to the mixture (they come after this processor in ``model.generate``).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..losses.online_preference import geometric_mixture_logits


class GeometricMixtureLogitsProcessor:
    """A ``transformers`` logits processor: policy scores in, geometric-mixture log-probabilities out.

    Args:
        ref: the reference policy: a causal LM, or any callable taking ``input_ids``, ``attention_mask``,
            ``position_ids``, ``past_key_values``, ``use_cache`` and returning an object with ``logits`` and
            ``past_key_values`` (e.g. :func:`adapter_disabled` of a PEFT policy).
        mixture_coef: weight of the reference in [0, 1] (0: the policy itself, 1: the reference).
        attention_mask: the (B, prompt_len) mask of the left-padded prompts ``generate`` started from.
    """

    def __init__(self, ref: Callable[..., Any], mixture_coef: float, attention_mask: torch.Tensor):
        if not 0.0 <= mixture_coef <= 1.0:
            raise ValueError(f"mixture_coef must be in [0, 1], got {mixture_coef}")
        self.ref, self.mixture_coef = ref, mixture_coef
        self.prompt_mask = attention_mask
        self._mask: torch.Tensor | None = None
        self._past = None
        self._length = 0

    @torch.no_grad()
    def _ref_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        length = input_ids.shape[1]
        if self._past is None or length != self._length + 1:  # first step (or an unexpected call): full prefix
            extra = length - self.prompt_mask.shape[1]
            mask = self.prompt_mask.to(input_ids.device)
            if extra > 0:
                mask = torch.cat([mask, mask.new_ones(mask.shape[0], extra)], dim=1)
            feed, positions = input_ids, (mask.cumsum(-1) - 1).clamp(min=0)
            past = None
        else:
            mask = torch.cat([self._mask, self._mask.new_ones(self._mask.shape[0], 1)], dim=1)
            feed, positions = input_ids[:, -1:], (mask.sum(-1, keepdim=True) - 1)
            past = self._past
        out = self.ref(input_ids=feed, attention_mask=mask, position_ids=positions, past_key_values=past,
                       use_cache=True)
        self._mask, self._past, self._length = mask, out.past_key_values, length
        return out.logits[:, -1, :]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        ref_logits = self._ref_logits(input_ids).to(scores.dtype)
        vocab = min(scores.shape[-1], ref_logits.shape[-1])  # padded vocabularies: mix the shared part
        mixed = torch.full_like(scores, float("-inf"))
        mixed[:, :vocab] = geometric_mixture_logits(scores[:, :vocab].float(), ref_logits[:, :vocab].float(),
                                                    self.mixture_coef).to(scores.dtype)
        return mixed


def adapter_disabled(policy) -> Callable[..., Any]:
    """The reference of a PEFT policy as a callable: ``policy`` run with its adapter disabled."""

    def forward(**kwargs):
        with policy.disable_adapter():
            return policy(**kwargs)

    return forward


__all__ = ["GeometricMixtureLogitsProcessor", "adapter_disabled"]
