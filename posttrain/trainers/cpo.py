"""Contrastive Preference Optimization: ``CPOConfig`` and ``CPOTrainer`` (TRL-compatible names).

Reference-free: the shared preference core (:mod:`.preference_base`) plus
:func:`posttrain.losses.cpo.cpo_loss` and a behaviour-cloning NLL term on the chosen completions,
``loss = mean(L_prefer) + cpo_alpha · NLL(chosen)``. ``loss_type="simpo"`` is SimPO (set ``cpo_alpha=0``
for pure SimPO) and ``"alphapo"`` is AlphaPO (``cpo_alpha`` 0 unless given, as TRL); ``ipo``, ``simpo`` and
``alphapo`` use length-averaged log-probs (as TRL's CPO, and IPO in posttrain's and TRL's DPO), ``sigmoid`` and
``hinge`` summed ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..losses.tokens import LossSum
from ..losses.cpo import CPO_LOSS_TYPES, cpo_loss
from .base import check_choice
from .logprobs import completion_logps
from .preference_base import PreferenceConfig, PreferenceTrainer


@dataclass
class CPOConfig(PreferenceConfig):
    """Configuration of :class:`CPOTrainer`. Field names and defaults follow TRL's ``CPOConfig``."""

    loss_type: str = field(default="sigmoid", metadata={"help": "Loss type.", "choices": list(CPO_LOSS_TYPES)})
    label_smoothing: float = field(default=0.0, metadata={"help": "Label noise rate (sigmoid / simpo)."})
    cpo_alpha: float | None = field(default=None, metadata={"help": "Weight of the NLL term on the chosen completions. "
                                    "Default: 1.0, or 0.0 with loss_type='alphapo' (pure AlphaPO, as TRL)."})
    simpo_gamma: float = field(default=0.5, metadata={"help": "Target reward margin of SimPO / AlphaPO."})
    alpha: float = field(default=0.0, metadata={"help": "AlphaPO reward shape (0: plain log-probs)."})

    def __post_init__(self):
        check_choice("loss_type", self.loss_type, CPO_LOSS_TYPES)
        if self.loss_type == "alphapo" and self.alpha == 0.0:
            raise ValueError("loss_type='alphapo' needs a non-zero alpha (alpha=0 is SimPO: use loss_type='simpo').")
        if self.cpo_alpha is None:  # TRL's CPOConfig turns loss_type="alphapo" into SimPO with cpo_alpha=0
            self.cpo_alpha = 0.0 if self.loss_type == "alphapo" else 1.0
        super().__post_init__()


class CPOTrainer(PreferenceTrainer):
    """CPO / SimPO / AlphaPO on paired preference data; no reference model.

    Logs ``rewards/chosen``, ``rewards/rejected``, ``rewards/accuracies``, ``rewards/margins``,
    ``logps/chosen``, ``logps/rejected``, ``logits/chosen``, ``logits/rejected`` and ``nll_loss``.
    """

    config_class = CPOConfig
    _run_suffix = "CPO"

    def _compute_loss(self, model, batch) -> LossSum:
        args: CPOConfig = self.args
        policy = completion_logps(model, self.model_rows(batch))
        n = policy.sum.shape[0] // 2
        # length-averaged for IPO (its target margin 1/(2β) is on a per-token scale), SimPO and AlphaPO
        scores = policy.mean if args.loss_type in ("ipo", "simpo", "alphapo") else policy.sum
        chosen, rejected = scores[:n], scores[n:]
        out = cpo_loss(chosen, rejected, beta=args.beta, loss_type=args.loss_type,
                       label_smoothing=args.label_smoothing, simpo_gamma=args.simpo_gamma, alpha=args.alpha)
        nll = self.chosen_nll(policy, n)
        self.record("nll_loss", nll)
        self.record_pair_metrics(out.chosen_rewards, out.rejected_rewards, chosen, rejected, policy)
        return LossSum(out.losses.sum() + n * args.cpo_alpha * nll, n)  # the NLL term (a token mean) on every pair


__all__ = ["CPOConfig", "CPOTrainer"]
