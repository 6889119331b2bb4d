"""CPO (with SimPO and AlphaPO) and ORPO losses: reference-free preference losses as pure tensor functions.

Like every loss in :mod:`posttrain.losses.preference`, they take per-sequence log-probabilities of shape ``(B,)``;
``cpo_loss`` wants them summed for ``sigmoid``/``hinge``/``ipo`` and length-averaged for ``simpo``/``alphapo``,
``orpo_loss`` length-averaged (<= 0). Names follow TRL's ``CPOConfig`` and ``ORPOConfig``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .common import PreferenceLossOutput, check_1d, cross_entropy_on_margin, log1mexp, unknown_name

__all__ = ["CPO_LOSS_TYPES", "ORPOLossOutput", "cpo_loss", "orpo_loss"]

CPO_LOSS_TYPES: tuple[str, ...] = ("sigmoid", "hinge", "ipo", "simpo", "alphapo")


class ORPOLossOutput(NamedTuple):
    """ORPO odds-ratio term plus the two scalar metrics TRL logs."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    log_odds_ratio: torch.Tensor  # mean of logsigmoid(log_odds), detached 0-dim
    log_odds_chosen: torch.Tensor  # mean of log_odds, detached 0-dim


# ---------------------------------------------------------------------------
# CPO / SimPO / AlphaPO
# ---------------------------------------------------------------------------


def _alphapo_reward(logps: torch.Tensor, alpha: float) -> torch.Tensor:
    """``(1 - p^-alpha) / alpha`` with ``p = exp(logps)``, written as ``-expm1(-alpha·logps)/alpha``."""
    cap = math.log(torch.finfo(logps.dtype).max) - 1.0
    return -torch.expm1(torch.clamp(-alpha * logps, max=cap)) / alpha


def cpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    simpo_gamma: float = 0.5,
    alpha: float = 0.0,
) -> PreferenceLossOutput:
    """CPO loss — Xu et al. 2024, 'Contrastive Preference Optimization', the L_prefer term (reference-free DPO).

    Reference-free: only policy log-probs, shape ``(B,)``. Write
    ``m = r_w - r_l`` where ``r = logps`` (or the AlphaPO-shaped reward when
    ``alpha != 0``, see below). Loss types (TRL ``CPOConfig`` names):

    * ``sigmoid`` -- ``-(1-ε) log σ(β·m) - ε log σ(-β·m)`` (``ε = label_smoothing``);
      expects **summed** logps.
    * ``hinge`` -- ``relu(1 - β·m)``; summed logps.
    * ``ipo`` -- ``(m - 1/(2β))²``; expects **length-averaged** logps (as TRL's CPO and IPO in DPO).
    * ``simpo`` -- SimPO (Meng et al. 2024, Eq. 6): ``-log σ(β·m - γ)`` with
      ``γ = simpo_gamma`` (label smoothing applies as for ``sigmoid``);
      expects **length-averaged** logps.
    * ``alphapo`` -- AlphaPO (Gupta et al. 2025): SimPO with the reward
      ``r = (1 - p^-α)/α``, ``p = exp(avg logp)`` -- i.e. ``-(exp(-α·logp) - 1)/α``;
      expects **length-averaged** logps. α → 0 recovers SimPO.

    As in TRL, a non-zero ``alpha`` reshapes the reward for every loss type
    (``alphapo`` is then just ``simpo`` on shaped rewards). The CPO NLL
    regulariser ``cpo_alpha · NLL(chosen)`` is the caller's job.

    Returns ``(losses, chosen_rewards, rejected_rewards)`` with rewards
    ``β·r`` (detached).
    """
    if loss_type not in CPO_LOSS_TYPES:
        raise unknown_name("loss_type", loss_type, CPO_LOSS_TYPES)
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    check_1d(chosen_logps=chosen_logps, rejected_logps=rejected_logps)

    if alpha != 0.0:
        r_w = _alphapo_reward(chosen_logps, alpha)
        r_l = _alphapo_reward(rejected_logps, alpha)
    else:
        r_w, r_l = chosen_logps, rejected_logps
    margin = r_w - r_l

    if loss_type in ("simpo", "alphapo"):
        losses = cross_entropy_on_margin(beta * margin - simpo_gamma, label_smoothing)
    elif loss_type == "sigmoid":
        losses = cross_entropy_on_margin(beta * margin, label_smoothing)
    elif loss_type == "hinge":
        losses = torch.relu(1.0 - beta * margin)
    else:  # ipo
        losses = (margin - 1.0 / (2.0 * beta)) ** 2
    return PreferenceLossOutput(losses, (beta * r_w).detach(), (beta * r_l).detach())


# ---------------------------------------------------------------------------
# ORPO
# ---------------------------------------------------------------------------


def orpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
) -> ORPOLossOutput:
    """ORPO odds-ratio loss — Hong et al. 2024, 'ORPO: Monolithic Preference Optimization...', Eq. 7 (L_OR).

    Expects **length-averaged** policy log-probs ``(B,)`` (values ``<= 0``).
    With ``odds(p) = p / (1 - p)``:
    ``log_odds = (c - r) - (log(1 - e^c) - log(1 - e^r))`` and
    ``losses = -β · log σ(log_odds)``. ``log(1 - e^x)`` is evaluated stably
    (``log(-expm1(x))`` near 0, ``log1p(-exp(x))`` far from it), so averages
    such as ``-1e-6`` or ``-50`` are fine; ``0`` is clamped to ``-tiny``.

    The full ORPO objective is ``NLL(chosen) + losses.mean()`` -- the NLL
    (TRL: token-mean cross-entropy on the chosen completion) is the caller's job.

    Returns :class:`ORPOLossOutput`: ``losses``; rewards ``β·logps``
    (detached); ``log_odds_ratio = mean(log σ(log_odds))`` and
    ``log_odds_chosen = mean(log_odds)`` as detached scalars (TRL's metrics).
    """
    check_1d(chosen_logps=chosen_logps, rejected_logps=rejected_logps)
    log_odds = (chosen_logps - rejected_logps) - (log1mexp(chosen_logps) - log1mexp(rejected_logps))
    ratio = F.logsigmoid(log_odds)
    return ORPOLossOutput(
        -beta * ratio,
        (beta * chosen_logps).detach(),
        (beta * rejected_logps).detach(),
        ratio.detach().mean(),
        log_odds.detach().mean(),
    )
