"""Online preference losses (Nash-MD, XPO) and the geometric mixture policy, as pure tensor functions.

Nothing here touches a model. Token-level tensors are ``(B, T)`` (``(B, T, V)`` for logits);
sequence-level tensors are ``(B,)``. Metric names follow TRL's logging keys (``loss/score``,
``loss/kl``, ``loss/dpo``, ``loss/xpo`` ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

__all__ = [
    "geometric_mixture_logits",
    "NashMDLossOutput",
    "nash_md_loss",
    "XPOLossOutput",
    "xpo_loss",
]

XPO_LOSS_TYPES = ("sigmoid", "ipo")


def geometric_mixture_logits(
    policy_logits: torch.Tensor, ref_logits: torch.Tensor, mixture_coef: float
) -> torch.Tensor:
    """Geometric mixture policy — Munos et al. 2023, 'Nash Learning from Human Feedback',
    Sec. on Nash-MD: the regularised policy pi_mix(y) proportional to
    pi(y)^(1 - beta) * mu(y)^beta (mu the reference policy, beta = ``mixture_coef``), applied
    token by token.

    Returns the **normalised** next-token log-probabilities
    ``log_softmax((1 - c) * log_softmax(policy_logits) + c * log_softmax(ref_logits))``
    (shape of the inputs, (..., V)). Sampling from ``softmax`` of the result (optionally after a
    temperature) samples from the geometric mixture; since it is already normalised it can also
    be used directly as a log-probability. Mixing raw logits instead gives the same result after
    normalisation. ``mixture_coef = 0`` gives the policy, ``1`` the reference.
    """
    if not 0.0 <= mixture_coef <= 1.0:
        raise ValueError(f"mixture_coef must be in [0, 1], got {mixture_coef}")
    mixed = (1.0 - mixture_coef) * F.log_softmax(policy_logits, dim=-1) + mixture_coef * F.log_softmax(
        ref_logits, dim=-1
    )
    return F.log_softmax(mixed, dim=-1)


@dataclass
class NashMDLossOutput:
    """Result of :func:`nash_md_loss`: per-example ``losses`` (B,) (``loss``: their mean; a trainer normalises
    their sum itself), ``score`` (B,) = (P - 0.5) * log pi(y) and ``kl`` (B,) = log pi(y) - log pi_ref(y)
    (detached)."""

    losses: torch.Tensor
    score: torch.Tensor
    kl: torch.Tensor

    @property
    def loss(self) -> torch.Tensor:
        return self.losses.mean()

    @property
    def metrics(self) -> dict[str, torch.Tensor]:
        """Detached batch means keyed by TRL's Nash-MD logging names."""
        return {"loss/score": self.score.detach().mean(), "loss/kl": self.kl.detach().mean()}


def nash_md_loss(
    model_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    probabilities: torch.Tensor,
    *,
    beta: float,
    mask: Optional[torch.Tensor] = None,
) -> NashMDLossOutput:
    """Nash-MD policy loss — Munos et al. 2023, 'Nash Learning from Human Feedback', Nash-MD
    update (Sec. on Nash-MD / its policy-gradient form), as a REINFORCE surrogate.

    For a completion y sampled from the policy pi and P = P(y beats y' ~ geometric mixture)
    (from a judge or sigmoid(reward difference)), the surrogate is
    ``loss = mean_b[ beta * kl_term_b - score_b ]`` with

    * ``score_b = (P_b - 0.5) * log pi(y_b)`` — REINFORCE on the preference, 0.5 being the
      control variate (a tie);
    * ``kl_term``: REINFORCE estimate of the KL gradient, stopgrad(log pi - log pi_ref) * log pi.

    Inputs are either sequence log-probability sums ``(B,)`` — then kl_term =
    sg(logp_sum - ref_sum) * logp_sum — or per-token ``(B, T)`` log-probs with an optional
    ``mask`` — then sequences are summed for the score and kl_term = sum_t sg(logp_t - ref_t)
    * logp_t (the token-wise form TRL's NashMDTrainer uses). ``probabilities`` is (B,) and
    carries no gradient. Returns :class:`NashMDLossOutput`; ``metrics`` gives ``loss/score``
    (mean score) and ``loss/kl`` (mean of sum_t(logp - ref)).
    """
    probabilities = probabilities.detach().to(model_logps.dtype)
    ref_logps = ref_logps.detach()
    if model_logps.dim() == 1:
        seq_logps = model_logps
        log_ratio = (model_logps - ref_logps).detach()
        kl_term = log_ratio * model_logps
        kl = log_ratio
    elif model_logps.dim() == 2:
        if mask is None:
            w = torch.ones_like(model_logps)
        else:
            w = mask.to(model_logps.dtype)
        keep = w != 0
        zero = torch.zeros_like(model_logps)
        logp = torch.where(keep, model_logps * w, zero)
        ref = torch.where(keep, ref_logps * w, zero)
        seq_logps = logp.sum(dim=-1)
        tok_ratio = (logp - ref).detach()
        kl_term = (tok_ratio * logp).sum(dim=-1)
        kl = tok_ratio.sum(dim=-1)
    else:
        raise ValueError(f"model_logps must be (B,) or (B, T), got shape {tuple(model_logps.shape)}")
    score = (probabilities - 0.5) * seq_logps
    return NashMDLossOutput(losses=beta * kl_term - score, score=score, kl=kl)


@dataclass
class XPOLossOutput:
    """Result of :func:`xpo_loss`: scalar ``loss``; per-example ``dpo_losses`` and ``xpo_losses``
    (B,); implicit rewards ``chosen_rewards`` / ``rejected_rewards`` = beta * log-ratio (detached)."""

    loss: torch.Tensor
    dpo_losses: torch.Tensor
    xpo_losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor

    @property
    def metrics(self) -> dict[str, torch.Tensor]:
        """Detached batch means keyed by TRL's XPO logging names."""
        margins = self.chosen_rewards - self.rejected_rewards
        return {
            "loss/dpo": self.dpo_losses.detach().mean(),
            "loss/xpo": self.xpo_losses.detach().mean(),
            "rewards/chosen": self.chosen_rewards.mean(),
            "rewards/rejected": self.rejected_rewards.mean(),
            "rewards/margins": margins.mean(),
            "rewards/accuracies": (margins > 0).float().mean(),
        }


def xpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    ref_completion_policy_logps: torch.Tensor,
    *,
    beta: float,
    alpha: float,
    loss_type: str = "sigmoid",
) -> XPOLossOutput:
    """XPO loss — Xie et al. 2024, 'Exploratory Preference Optimization: Harnessing Implicit
    Q*-Approximation for Sample-Efficient RLHF', Algorithm 1 (policy update): the DPO loss on the
    (chosen, rejected) pair plus alpha * log pi(y_ref), y_ref ~ pi_ref.

    All inputs are (B,) sequence log-probability sums: ``chosen_logps`` / ``rejected_logps``
    under the policy, ``ref_*`` under the reference, and ``ref_completion_policy_logps`` the
    policy's log-probability of the completion the *reference* model sampled. With
    h = (chosen - ref_chosen) - (rejected - ref_rejected):

    * ``"sigmoid"``: dpo = -log sigmoid(beta * h) (Rafailov et al. 2023, Eq. 7);
    * ``"ipo"``: dpo = (h - 1 / (2 beta))^2 (Azar et al. 2023, Eq. 17);

    xpo = alpha * log pi(y_ref): *adding* it to the minimised loss lowers the policy's
    likelihood of reference samples, the exploration bonus of the paper (alpha > 0).
    ``loss = mean(dpo + xpo)``. Returns :class:`XPOLossOutput`; ``metrics`` gives
    ``loss/dpo`` and ``loss/xpo`` (batch means) and the implicit-reward statistics.
    """
    if loss_type not in XPO_LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {XPO_LOSS_TYPES}, got {loss_type!r}")
    chosen_ratio = chosen_logps - ref_chosen_logps
    rejected_ratio = rejected_logps - ref_rejected_logps
    h = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        dpo = -F.logsigmoid(beta * h)
    else:
        dpo = (h - 1.0 / (2.0 * beta)) ** 2
    xpo = alpha * ref_completion_policy_logps
    loss = (dpo + xpo).mean()
    return XPOLossOutput(
        loss=loss,
        dpo_losses=dpo,
        xpo_losses=xpo,
        chosen_rewards=(beta * chosen_ratio).detach(),
        rejected_rewards=(beta * rejected_ratio).detach(),
    )
