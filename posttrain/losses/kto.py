"""KTO and BCO losses on unpaired preference data (one completion per example and a desirable/undesirable label),
as pure tensor functions: :func:`kto_loss` with its KL reference point (:func:`kto_kl_estimate`), :func:`bco_loss`
with the running reward mean (:class:`RunningMean`) and UDM's density ratio. Per-sequence log-probabilities are
summed over the completion tokens. Names follow TRL's ``KTOConfig`` and ``BCOConfig``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .common import check_1d, unknown_name

__all__ = ["KTO_LOSS_TYPES", "UnpairedLossOutput", "kto_kl_estimate", "kto_loss", "RunningMean", "udm_density_ratio",
           "bco_loss"]

KTO_LOSS_TYPES: tuple[str, ...] = ("kto", "apo_zero_unpaired")


class UnpairedLossOutput(NamedTuple):
    """Per-example losses for unpaired (KTO / BCO) data, in input order.

    ``rewards`` has shape ``(B,)``; ``chosen_rewards`` / ``rejected_rewards``
    are ``rewards[labels]`` / ``rewards[~labels]`` (variable length, possibly
    empty). All rewards are detached.
    """

    losses: torch.Tensor
    rewards: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


# ---------------------------------------------------------------------------
# KTO
# ---------------------------------------------------------------------------


def _as_bool_labels(labels: torch.Tensor | Sequence[bool], like: torch.Tensor) -> torch.Tensor:
    labels = torch.as_tensor(labels, device=like.device)
    if labels.dim() != 1 or labels.shape[0] != like.shape[0]:
        raise ValueError(f"labels must have shape ({like.shape[0]},), got {tuple(labels.shape)}")
    return labels.bool()


def kto_kl_estimate(
    kl_policy_logps: torch.Tensor,
    kl_ref_logps: torch.Tensor,
    *,
    clamp: bool = True,
) -> torch.Tensor:
    """KTO reference point — Ethayarajh et al. 2024, 'KTO: Model Alignment as...', batch KL estimate of z_0.

    The inputs are summed log-probs ``(B,)`` of *mismatched* pairs (prompt i
    with the completion of example j != i, TRL shifts the completions by one)
    under the policy and the reference. Returns the detached scalar
    ``mean(policy - ref)``, clamped at 0 when ``clamp=True``.

    Multi-process: call with ``clamp=False`` on each rank, gather and average
    the per-rank values, then ``.clamp(min=0)`` -- as TRL does.
    """
    check_1d(kl_policy_logps=kl_policy_logps, kl_ref_logps=kl_ref_logps)
    kl = (kl_policy_logps - kl_ref_logps).detach().mean()
    return kl.clamp(min=0) if clamp else kl


def kto_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    labels: torch.Tensor | Sequence[bool],
    kl: torch.Tensor | float | None = None,
    *,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    loss_type: str = "kto",
) -> UnpairedLossOutput:
    """KTO loss — Ethayarajh et al. 2024, 'KTO: Model Alignment as Prospect Theoretic Optimization', L_KTO.

    Unpaired data: one completion per example, **summed** log-probs ``(B,)``
    for policy and reference, and boolean ``labels`` (True = desirable).
    With ``h = policy_logps - ref_logps`` and ``z = kl`` (see
    :func:`kto_kl_estimate`; detached and clamped at 0 here as well):

    * ``kto``: desirable ``λ_D (1 - σ(β(h - z)))``, undesirable
      ``λ_U (1 - σ(β(z - h)))`` with ``λ_D = desirable_weight``,
      ``λ_U = undesirable_weight``.
    * ``apo_zero_unpaired`` (APO-zero for unpaired data, D'Oosterlinck et al.
      2024): desirable ``λ_D (1 - σ(βh))``, undesirable ``λ_U σ(βh)``; ``kl``
      is ignored.

    ``kl=None`` means 0 (TRL skips the KL pass for ``apo_zero_unpaired``).
    Losses keep the input order (TRL concatenates desirable then undesirable;
    the mean is the same). Returns :class:`UnpairedLossOutput` with rewards
    ``β·h`` (detached).
    """
    if loss_type not in KTO_LOSS_TYPES:
        raise unknown_name("loss_type", loss_type, KTO_LOSS_TYPES)
    check_1d(policy_logps=policy_logps, ref_logps=ref_logps)
    labels = _as_bool_labels(labels, policy_logps)
    h = policy_logps - ref_logps
    if loss_type == "kto":
        if kl is None:
            z = torch.zeros((), dtype=h.dtype, device=h.device)
        else:
            z = torch.as_tensor(kl, dtype=h.dtype, device=h.device).detach().clamp(min=0)
        desirable = 1.0 - torch.sigmoid(beta * (h - z))
        undesirable = 1.0 - torch.sigmoid(beta * (z - h))
    else:
        desirable = 1.0 - torch.sigmoid(beta * h)
        undesirable = torch.sigmoid(beta * h)
    losses = torch.where(labels, desirable_weight * desirable, undesirable_weight * undesirable)
    rewards = (beta * h).detach()
    return UnpairedLossOutput(losses, rewards, rewards[labels], rewards[~labels])


# ---------------------------------------------------------------------------
# BCO
# ---------------------------------------------------------------------------


class RunningMean:
    """Running reward mean δ — Jung et al. 2024, 'Binary Classifier Optimization...', reward shift of the BCO loss.

    BCO (Jung et al. 2024) shifts the implicit reward by δ, a moving average
    of the rewards. TRL's ``BCOTrainer`` (and ``bco_pair`` in DPO) updates it
    once per step, *before* computing the loss, with one scalar: the detached
    mean of this step's chosen and rejected rewards,
    ``torch.cat([chosen_rewards, rejected_rewards]).mean()``, and then uses
    ``δ = running.mean``. Each update adds ``values.numel()`` samples, so
    with one scalar per step δ is the plain average of all per-step batch
    means seen so far (including the current one). With several processes,
    gather the per-rank scalars and pass the gathered tensor.

    The update is the exact parallel (Chan et al.) merge of mean and
    population variance. ``state_dict`` / ``load_state_dict`` let a trainer
    checkpoint it.
    """

    def __init__(self, mean: float = 0.0, var: float = 1.0, count: float = 0.0) -> None:
        self.mean = float(mean)
        self.var = float(var)
        self.count = float(count)

    @torch.no_grad()
    def update(self, values: torch.Tensor | float | Sequence[float]) -> float:
        """Merge ``values`` (any shape, detached) into the statistics; returns the new mean."""
        xs = torch.as_tensor(values, dtype=torch.float64).detach().reshape(-1)
        n = xs.numel()
        if n == 0:
            return self.mean
        batch_mean = float(xs.mean())
        batch_var = float(((xs - batch_mean) ** 2).mean())
        total = self.count + n
        delta = batch_mean - self.mean
        m2 = self.var * self.count + batch_var * n + delta * delta * self.count * n / total
        self.mean += delta * n / total
        self.var = m2 / total
        self.count = total
        return self.mean

    @property
    def std(self) -> float:
        """Unbiased standard deviation of everything seen so far."""
        if self.count <= 1:
            return math.sqrt(self.var)
        return math.sqrt(self.var * self.count / (self.count - 1))

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.mean = float(state["mean"])
        self.var = float(state["var"])
        self.count = float(state["count"])

    def __repr__(self) -> str:
        return f"RunningMean(mean={self.mean!r}, var={self.var!r}, count={self.count!r})"


def udm_density_ratio(
    prob_desirable: torch.Tensor,
    *,
    min_density_ratio: float = 0.5,
    max_density_ratio: float = 10.0,
) -> torch.Tensor:
    """UDM density ratio — Jung et al. 2024, 'Binary Classifier Optimization...', underlying distribution matching.

    ``prob_desirable`` is a prompt classifier's probability that a prompt
    comes from the desirable set; the weight for an undesirable example is
    ``p / (1 - p)`` clamped to ``[min_density_ratio, max_density_ratio]``
    (TRL ``BCOConfig`` defaults 0.5 and 10). Training the classifier on
    prompt embeddings is the trainer's job. Returns detached ``(B,)``.
    """
    p = prob_desirable.detach()
    ratio = p / (1.0 - p)
    return ratio.clamp(min=min_density_ratio, max=max_density_ratio)


def bco_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    labels: torch.Tensor | Sequence[bool],
    *,
    beta: float = 0.1,
    delta: torch.Tensor | float = 0.0,
    udm_weights: torch.Tensor | None = None,
) -> UnpairedLossOutput:
    """BCO loss — Jung et al. 2024, 'Binary Classifier Optimization for LLM Alignment', reward-shifted BCE objective.

    Unpaired data, **summed** log-probs ``(B,)`` and boolean ``labels``.
    Reward ``r = β(policy_logps - ref_logps)``; desirable examples get
    ``-log σ(r - δ)``, undesirable ones ``-log σ(-(r - δ))``, with
    ``δ = delta`` the running reward mean (see :class:`RunningMean`: update
    it with ``r.detach().mean()`` for this step first, then pass
    ``delta=running.mean``).

    ``udm_weights`` (optional ``(B,)``, e.g. from :func:`udm_density_ratio`)
    multiplies the losses of the *undesirable* examples only (underlying
    distribution matching); entries at desirable positions are ignored.

    Returns :class:`UnpairedLossOutput` (losses in input order, rewards
    detached).
    """
    check_1d(policy_logps=policy_logps, ref_logps=ref_logps, udm_weights=udm_weights)
    labels = _as_bool_labels(labels, policy_logps)
    rewards = beta * (policy_logps - ref_logps)
    shifted = rewards - torch.as_tensor(delta, dtype=rewards.dtype, device=rewards.device).detach()
    losses = torch.where(labels, -F.logsigmoid(shifted), -F.logsigmoid(-shifted))
    if udm_weights is not None:
        losses = losses * torch.where(labels, torch.ones_like(udm_weights), udm_weights.detach())
    rewards = rewards.detach()
    return UnpairedLossOutput(losses, rewards, rewards[labels], rewards[~labels])
