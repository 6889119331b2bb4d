"""Distillation losses (GKD's generalized Jensen-Shannon divergence) as pure tensor functions.

Nothing here touches a model. Token-level tensors are ``(B, T)`` (``(B, T, V)`` for logits). The online preference
losses of Nash-MD and XPO are in :mod:`posttrain.losses.online_preference`.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["generalized_jsd_loss"]

JSD_REDUCTIONS = ("batchmean", "sum", "mean", "none")


def _kl_from_logprobs(logp: torch.Tensor, logq: torch.Tensor, elementwise: bool = False) -> torch.Tensor:
    """KL(P || Q) over the last dim from log-probabilities (``elementwise``: its terms p (log p - log q), unsummed);
    terms with p = 0 count as 0."""
    p = torch.exp(logp)
    support = p > 0
    # zero the log terms off P's support *before* multiplying, so 0 * (-inf) never appears in the
    # forward pass nor in the backward pass
    zero = torch.zeros_like(logp)
    diff = torch.where(support, logp, zero) - torch.where(support, logq, zero)
    return p * diff if elementwise else (p * diff).sum(dim=-1)


def generalized_jsd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: Optional[torch.Tensor] = None,
    *,
    mask: Optional[torch.Tensor] = None,
    beta: float = 0.5,
    temperature: float = 1.0,
    reduction: str = "batchmean",
    elementwise: bool = False,
) -> torch.Tensor:
    """Generalized Jensen-Shannon divergence — Agarwal et al. 2024, 'On-Policy Distillation of
    Language Models: Learning from Self-Generated Mistakes' (GKD), Sec. 2, generalized JSD:
    JSD(beta)(P || Q) = beta KL(P || M) + (1 - beta) KL(Q || M), M = beta P + (1 - beta) Q.

    Here P is the **teacher** and Q the **student** token distribution (the mapping TRL's
    ``GKDTrainer`` uses), both softmax(logits / temperature) over the last dim, so

    * ``beta = 0``: exactly the forward KL, KL(teacher || student) (mode-covering, the
      supervised-KD direction);
    * ``beta = 1``: exactly the reverse KL, KL(student || teacher) (mode-seeking);
    * ``0 < beta < 1``: the mixture formula, with log M = logsumexp(log P + log beta,
      log Q + log(1 - beta)) computed in log space.

    The endpoints are special-cased to the plain KLs (the mixture formula itself tends to 0 at
    both ends; its gradient direction tends to the KL above up to a factor beta or 1 - beta).
    Terms with zero probability contribute 0, so -inf logits never produce NaN (values or
    gradients). Logits at ignored positions may hold any finite values; they get zero gradient.

    Args:
        student_logits, teacher_logits: (..., V), typically (B, T, V).
        labels: optional (...) token labels; positions equal to -100 are ignored.
        mask: optional (...) completion mask (nonzero = keep). ``labels`` and ``mask`` may be
            combined; a position counts only if both keep it.
        beta: interpolation coefficient in [0, 1].
        temperature: logits are divided by it before the softmax (no T^2 rescaling).
        reduction: over the kept positions, with the per-position divergence D summed over V:

            * ``"batchmean"``: sum D / number of kept positions (all positions when neither
              ``labels`` nor ``mask`` is given);
            * ``"sum"``: sum D;
            * ``"mean"``: sum D / (number of kept positions * V) — the element-wise mean TRL's
              ``F.kl_div``-style ``"mean"`` gives;
            * ``"none"``: the (...) per-position divergence, 0 at ignored positions; with ``elementwise``, its
              (..., V) terms (each vocabulary entry's share; TRL's ``reduction="none"``).
    """
    if reduction not in JSD_REDUCTIONS:
        raise ValueError(f"reduction must be one of {JSD_REDUCTIONS}, got {reduction!r}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits differ in shape: {tuple(student_logits.shape)} vs {tuple(teacher_logits.shape)}"
        )
    s_logp = F.log_softmax(student_logits / temperature, dim=-1)
    t_logp = F.log_softmax(teacher_logits / temperature, dim=-1)

    each = elementwise and reduction == "none"
    if beta == 0.0:
        div = _kl_from_logprobs(t_logp, s_logp, each)
    elif beta == 1.0:
        div = _kl_from_logprobs(s_logp, t_logp, each)
    else:
        # clamp -inf (zero-probability tokens) to the most negative finite value: the mixture is
        # unchanged but logsumexp's backward no longer meets (-inf) - (-inf)
        floor = torch.finfo(t_logp.dtype).min
        log_mix = torch.logsumexp(
            torch.stack([t_logp.clamp(min=floor) + math.log(beta), s_logp.clamp(min=floor) + math.log(1.0 - beta)]),
            dim=0,
        )
        div = beta * _kl_from_logprobs(t_logp, log_mix, each) + (1.0 - beta) * _kl_from_logprobs(s_logp, log_mix, each)

    keep = torch.ones(div.shape[:-1] if each else div.shape, dtype=torch.bool, device=div.device)
    if labels is not None:
        keep = keep & (labels != -100)
    if mask is not None:
        keep = keep & mask.bool()
    div = torch.where(keep.unsqueeze(-1) if each else keep, div, torch.zeros_like(div))

    if reduction == "none":
        return div
    total = div.sum()
    if reduction == "sum":
        return total
    n = keep.sum().clamp(min=1).to(div.dtype)
    if reduction == "batchmean":
        return total / n
    return total / (n * student_logits.shape[-1])
