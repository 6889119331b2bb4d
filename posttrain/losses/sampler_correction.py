"""Importance-sampling correction between a separate sampler (vLLM) and the trainer.

A generation engine computes slightly different probabilities than the training forward pass (other kernels,
precision, batching), so completions sampled by it are a little off-policy for the trainer even right after a
weight sync. The correction re-weights each completion's (or token's) loss by the ratio of the trainer's
probability to the sampler's, capped for stability.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

SAMPLER_IS_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


class SamplerImportanceWeights(NamedTuple):
    weights: torch.Tensor
    """(B, T) for token modes, (B, 1) for sequence modes: multiplies the per-token policy loss."""
    ratio: torch.Tensor
    """The uncapped ratios, same shape (for metrics)."""


def sampler_importance_weights(trainer_logps: torch.Tensor, sampler_logps: torch.Tensor, mask: torch.Tensor, *,
                               mode: str = "sequence_mask", cap: float = 3.0) -> SamplerImportanceWeights:
    """Truncated (Yao et al. 2025, 'Your Efficient RL Framework Secretly Brings You Off-Policy RL Training', TIS:
    ``w = min(pi_train / pi_sampler, C)``) or masked (ratios above ``C`` give weight 0) importance weights.

    Args:
        trainer_logps: (B, T) log-probs of the sampled tokens under the trainer's policy at sampling time.
        sampler_logps: (B, T) log-probs the sampler drew them with (NaN where unknown: ratio 1).
        mask: (B, T) completion mask; masked positions count as a log ratio of 0.
        mode: ``"token_*"``: one ratio per token, ``exp(l_t - s_t)``; ``"sequence_*"``: one per completion,
            ``exp(sum_t (l_t - s_t))`` (the ratio of the sequence probabilities). ``"*_truncate"`` caps ratios at
            ``cap``; ``"*_mask"`` sets ratios above ``cap`` to 0 (drops that token or completion).
        cap: C > 0.

    Returns:
        :class:`SamplerImportanceWeights` (no gradient: both log-probs are treated as constants).
    """
    if mode not in SAMPLER_IS_MODES:
        raise ValueError(f"mode must be one of {SAMPLER_IS_MODES}, got {mode!r}")
    if cap <= 0:
        raise ValueError(f"cap must be > 0, got {cap}")
    diff = (trainer_logps.detach().float() - sampler_logps.detach().float()) * mask.float()
    diff = torch.nan_to_num(diff, nan=0.0)
    if mode.startswith("sequence"):
        diff = diff.sum(dim=-1, keepdim=True)
    ratio = torch.exp(diff)
    if mode.endswith("truncate"):
        weights = ratio.clamp(max=cap)
    else:
        weights = ratio.masked_fill(ratio > cap, 0.0)
    return SamplerImportanceWeights(weights=weights, ratio=ratio)


__all__ = ["SAMPLER_IS_MODES", "SamplerImportanceWeights", "sampler_importance_weights"]
