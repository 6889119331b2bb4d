"""Exploratory Preference Optimization: ``XPOConfig`` and ``XPOTrainer`` (TRL-compatible names).

Online DPO (:mod:`posttrain.trainers.online_dpo`) where each pair is one completion of the policy and one of the
reference policy, and the loss adds XPO's exploration term ``alpha * log pi(y_ref)``
(:func:`posttrain.losses.online_preference.xpo_loss`; Xie et al. 2024, Algorithm 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..losses.online_preference import xpo_loss
from .base import checkpointing_field
from .online_dpo import OnlineDPOConfig, OnlineDPOTrainer, as_float_list


@dataclass
class XPOConfig(OnlineDPOConfig):
    """Configuration of :class:`XPOTrainer`: :class:`~posttrain.trainers.online_dpo.OnlineDPOConfig` plus ``alpha``
    (TRL's default ``[1e-5]``)."""

    gradient_checkpointing: bool = checkpointing_field(False, "as in TRL 0.21, the last TRL with this trainer")

    alpha: list[float] = field(
        default_factory=lambda: [1e-5],
        metadata={"help": "Weight of the exploration term alpha * log pi(y_ref); a list gives one value per epoch."})

    def __post_init__(self):
        self.alpha = as_float_list(self.alpha, "alpha")
        super().__post_init__()


class XPOTrainer(OnlineDPOTrainer):
    """XPO on prompt-only data; the arguments of :class:`~posttrain.trainers.online_dpo.OnlineDPOTrainer`.

    For every prompt the policy samples one completion and the reference another; the judge / reward ranks the
    two, the DPO loss (``loss_type`` sigmoid or ipo) trains on the (chosen, rejected) pair, and ``alpha`` times the
    policy's log-probability of the reference completion is added. Logs TRL's names: ``loss/dpo``, ``loss/xpo``,
    ``objective/kl``, ``objective/entropy``, ``objective/model_scores``, ``objective/ref_scores`` and
    ``objective/scores_margin`` (with scores), ``rewards/*``, ``logps/*``, ``val/model_contain_eos_token``,
    ``val/ref_contain_eos_token``, ``alpha``, ``beta``.
    """

    _reference_samples = True  # one completion of each pair comes from the reference

    config_class = XPOConfig
    _run_suffix = "XPO"

    def sample_second(self, prompt_ids):
        return self.generate_from_reference(prompt_ids)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args, beta, alpha = self.args, self.beta, self.per_epoch(self.args.alpha)
        seq, ref_seq, _, _ = self.sequence_logps(model, inputs)
        chosen, rejected, ref_chosen, ref_rejected, decided = self.choose(inputs, seq, ref_seq)
        out = xpo_loss(chosen, rejected, ref_chosen, ref_rejected, self.members(seq, 1), beta=beta, alpha=alpha,
                       loss_type=args.loss_type)
        loss = self.finish_loss((out.dpo_losses * decided + out.xpo_losses).sum(), inputs, decided.numel())
        if decided.any():
            self.record("loss/dpo", out.dpo_losses[decided].detach().mean())
        self.record("loss/xpo", out.xpo_losses.detach().mean())
        model_kl = self.members((seq - ref_seq).detach(), 0)
        model_seq = self.members(seq.detach(), 0)
        self.record_objective(model_kl, -model_seq, beta, None)
        if self.judge is None:
            scores = self.groups(inputs["scores"])
            self.record("objective/model_scores", scores[:, 0].mean())
            self.record("objective/ref_scores", scores[:, 1].mean())
            self.record("objective/scores_margin", (scores[:, 0] - scores[:, 1]).mean())
        self.record_pair_metrics(chosen, rejected, ref_chosen, ref_rejected, decided, beta)
        has_eos = self.groups((~inputs["truncated"]).float())
        self.record("val/model_contain_eos_token", has_eos[:, 0].mean())
        self.record("val/ref_contain_eos_token", has_eos[:, 1].mean())
        self.record("alpha", alpha)
        return (loss, {}) if return_outputs else loss


__all__ = ["XPOConfig", "XPOTrainer"]
