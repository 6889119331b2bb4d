"""Reward-model losses as pure tensor functions: outcome (pairwise) and process (per-step) supervision.

Nothing here touches a model or a tokenizer. The outcome reward model (ORM) losses take the scalar scores
the model gave the chosen and the rejected completion of each pair, shape ``(B,)``; the process reward
model (PRM) losses take the classifier logits at the labelled step positions, shape ``(N, C)``, and the
step labels, shape ``(N,)``. Every loss is returned *per item* (per pair or per step) so the caller decides
how to normalise (``BaseTrainer.reduce_loss``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "bradley_terry_loss",
    "center_rewards_penalty",
    "reward_accuracy",
    "step_classification_loss",
    "step_accuracy",
]


def center_rewards_penalty(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Reward-centering auxiliary term (Eisenstein et al., 2023, "Helping or Herding?", Sec. 3): ``(r_c + r_r)^2``.

    Per pair, shape ``(B,)``. Its mean pushes the rewards of each pair to sum to zero, so the reward model's
    scores stay centred on 0 without changing which completion is preferred.
    """
    return (chosen_rewards + rejected_rewards).pow(2)


def bradley_terry_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin: torch.Tensor | float | None = None,
    center_rewards_coefficient: float | None = None,
) -> torch.Tensor:
    """Bradley-Terry pairwise reward loss (Ouyang et al., 2022, InstructGPT, Eq. 1; margin: Touvron et al., 2023, Llama 2, Eq. 2).

    For each pair::

        loss = -log sigmoid(r_c - r_r - m)  [+ coef * (r_c + r_r)^2]

    where ``r_c``/``r_r`` are the scalar rewards of the chosen/rejected completion and ``m`` is an optional
    per-pair margin (how much better the chosen completion is; 0 when absent). With
    ``center_rewards_coefficient`` the centering term of :func:`center_rewards_penalty` is added, so the mean of
    the returned losses equals ``mean(-logsigmoid(...)) + coef * mean((r_c + r_r)^2)``.

    Args:
        chosen_rewards: ``(B,)`` float rewards of the chosen completions.
        rejected_rewards: ``(B,)`` float rewards of the rejected completions.
        margin: ``(B,)`` tensor or a float, or None.
        center_rewards_coefficient: weight of the centering term, or None/0 for none.

    Returns:
        ``(B,)`` per-pair losses.
    """
    if chosen_rewards.shape != rejected_rewards.shape:
        raise ValueError(
            f"chosen_rewards {tuple(chosen_rewards.shape)} and rejected_rewards {tuple(rejected_rewards.shape)} "
            "must have the same shape."
        )
    diff = chosen_rewards - rejected_rewards
    if margin is not None:
        diff = diff - (margin.to(diff.dtype) if torch.is_tensor(margin) else margin)
    loss = -F.logsigmoid(diff)
    if center_rewards_coefficient:
        loss = loss + center_rewards_coefficient * center_rewards_penalty(chosen_rewards, rejected_rewards)
    return loss


def reward_accuracy(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Pairwise accuracy of a reward model (Ouyang et al., 2022, Sec. 3.5): 1.0 where ``r_c > r_r``, else 0.0 (ties count as wrong)."""
    return (chosen_rewards > rejected_rewards).float()


def step_classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Process-supervision step loss (Lightman et al., 2023, "Let's Verify Step by Step", Sec. 2.4): cross-entropy per step.

    Args:
        logits: ``(N, C)`` classifier logits at the N labelled step positions (C=2: bad/good).
        labels: ``(N,)`` integer step labels (1 = correct step, 0 = wrong step).

    Returns:
        ``(N,)`` per-step losses ``-log softmax(logits)[label]`` (computed in float32).
    """
    if logits.shape[0] != labels.shape[0]:
        raise ValueError(f"{logits.shape[0]} logit rows but {labels.shape[0]} labels.")
    return F.cross_entropy(logits.float(), labels.long(), reduction="none")


def step_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-step accuracy of a process reward model (Lightman et al., 2023): 1.0 where ``argmax(logits) == label``; shape ``(N,)``."""
    return (logits.argmax(dim=-1) == labels.long()).float()
