"""Losses and advantage estimators for reinforcement learning on diffusion models, as pure tensor functions.

A denoising chain of ``S`` steps is a sequence of ``S`` actions; a sample's reward is its advantage at every step
(DDPO). Log-probabilities are of whole transitions x_t -> x_{t-1} (one number per sample and step).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Sequence

import torch

from .policy import ppo_policy_loss

__all__ = ["DDPOLossOutput", "PerPromptStatTracker", "alignprop_loss", "ddpo_loss", "whiten_rewards"]

_STD_EPS = 1e-6  # added to the std divisor of reward whitening


@dataclass
class DDPOLossOutput:
    """Result of :func:`ddpo_loss`: scalar ``loss``; ``approx_kl`` = 0.5 mean (logp - old_logp)^2; ``clipfrac`` =
    fraction of samples whose ratio lies outside [1 - clip_range, 1 + clip_range] (TRL's definitions)."""

    loss: torch.Tensor
    approx_kl: torch.Tensor
    clipfrac: torch.Tensor


def ddpo_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float = 1e-4,
    adv_clip_max: float = 5.0,
) -> DDPOLossOutput:
    """DDPO-IS clipped objective — Black et al. 2023, 'Training Diffusion Models with Reinforcement Learning', Eq. 5
    with PPO clipping (Schulman et al. 2017, Eq. 7): L = mean max(-A r, -A clip(r, 1 - eps, 1 + eps)),
    r = exp(logp - old_logp), A = clamp(advantage, -adv_clip_max, adv_clip_max).

    All inputs (B,) (one transition per sample) or any common shape; the mean is over every element.
    """
    advantages = advantages.to(log_probs.dtype).clamp(-adv_clip_max, adv_clip_max)
    flat = lambda x: x.reshape(1, -1)  # noqa: E731 - ppo_policy_loss takes (B, T)
    out = ppo_policy_loss(flat(log_probs), flat(old_log_probs), flat(advantages),
                          torch.ones_like(flat(log_probs)), cliprange=clip_range)
    with torch.no_grad():
        ratio = torch.exp(log_probs.detach() - old_log_probs)
        clipfrac = ((ratio - 1.0).abs() > clip_range).float().mean()
    return DDPOLossOutput(loss=out.loss, approx_kl=out.approxkl, clipfrac=clipfrac)


def whiten_rewards(rewards: torch.Tensor) -> torch.Tensor:
    """Batch-standardised rewards (r - mean) / (std + 1e-6) — DDPO's advantages without per-prompt tracking
    (Black et al. 2023, Sec. 4.3)."""
    rewards = rewards.float()
    return (rewards - rewards.mean()) / (rewards.std(unbiased=False) + _STD_EPS)


class PerPromptStatTracker:
    """Per-prompt reward standardisation — Black et al. 2023, Sec. 4.3 / App. (per-prompt stat tracking): a sample's
    advantage is (r - mean) / (std + 1e-6) over the last ``buffer_size`` rewards of its prompt, or over the whole
    batch while a prompt has fewer than ``min_count`` rewards."""

    def __init__(self, buffer_size: int = 16, min_count: int = 16):
        self.buffer_size = buffer_size
        self.min_count = min_count
        self.stats: dict[str, deque] = {}

    def update(self, prompts: Sequence[str], rewards: torch.Tensor) -> torch.Tensor:
        """Add the batch's rewards to the buffers and return its advantages (same shape as ``rewards``)."""
        rewards = rewards.float().reshape(-1)
        if len(prompts) != rewards.numel():
            raise ValueError(f"got {len(prompts)} prompts for {rewards.numel()} rewards")
        advantages = torch.empty_like(rewards)
        batch_mean, batch_std = rewards.mean(), rewards.std(unbiased=False)
        for prompt in dict.fromkeys(prompts):
            idx = torch.tensor([i for i, p in enumerate(prompts) if p == prompt])
            buffer = self.stats.setdefault(prompt, deque(maxlen=self.buffer_size))
            buffer.extend(rewards[idx].tolist())
            if len(buffer) < self.min_count:
                mean, std = batch_mean, batch_std
            else:
                values = torch.tensor(list(buffer))
                mean, std = values.mean(), values.std(unbiased=False)
            advantages[idx] = (rewards[idx] - mean) / (std + _STD_EPS)
        return advantages

    def get_stats(self) -> dict[str, dict[str, float]]:
        """Mean, std and count of each prompt's buffer."""
        return {p: {"mean": float(torch.tensor(list(b)).mean()), "std": float(torch.tensor(list(b)).std(unbiased=False)),
                    "count": len(b)} for p, b in self.stats.items()}


def alignprop_loss(rewards: torch.Tensor) -> torch.Tensor:
    """AlignProp reward-backpropagation loss — Prabhudesai et al. 2023, 'Aligning Text-to-Image Diffusion Models
    with Reward Backpropagation', Sec. 4: L = -mean_i r(x_0^i, c_i), differentiable through the sampled images."""
    return -rewards.float().mean()
