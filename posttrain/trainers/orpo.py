"""Odds Ratio Preference Optimization: ``ORPOConfig`` and ``ORPOTrainer`` (TRL-compatible names).

Reference-free and monolithic (no SFT stage needed): the shared preference core
(:mod:`.preference_base`) plus :func:`posttrain.losses.preference.orpo_loss`,
``loss = NLL(chosen) + mean(-β · log σ(log odds(chosen) - log odds(rejected)))`` on length-averaged
log-probs.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..losses.tokens import LossSum
from ..losses.cpo import orpo_loss
from .logprobs import completion_logps
from .preference_base import PreferenceConfig, PreferenceTrainer


@dataclass
class ORPOConfig(PreferenceConfig):
    """Configuration of :class:`ORPOTrainer`. Field names and defaults follow TRL's ``ORPOConfig``
    (``beta`` is the weight λ of the odds-ratio term)."""


class ORPOTrainer(PreferenceTrainer):
    """ORPO on paired preference data; no reference model.

    Logs ``rewards/*``, ``logps/*``, ``logits/*`` (TRL's names), ``nll_loss``, ``log_odds_ratio`` and
    ``log_odds_chosen``.
    """

    config_class = ORPOConfig
    _run_suffix = "ORPO"

    def _compute_loss(self, model, batch) -> LossSum:
        policy = completion_logps(model, self.model_rows(batch))
        n = policy.sum.shape[0] // 2
        chosen, rejected = policy.mean[:n], policy.mean[n:]
        out = orpo_loss(chosen, rejected, beta=self.args.beta)
        nll = self.chosen_nll(policy, n)
        self.record("nll_loss", nll)
        self.record("log_odds_ratio", out.log_odds_ratio)
        self.record("log_odds_chosen", out.log_odds_chosen)
        self.record_pair_metrics(out.chosen_rewards, out.rejected_rewards, chosen, rejected, policy)
        return LossSum(out.losses.sum() + n * nll, n)  # the NLL term (a token mean) on every pair


__all__ = ["ORPOConfig", "ORPOTrainer"]
