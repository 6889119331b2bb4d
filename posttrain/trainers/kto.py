"""Kahneman-Tversky Optimization: ``KTOConfig`` and ``KTOTrainer`` (TRL-compatible names).

Unpaired preference data (``prompt``/``completion``/``label``); paired data is unpaired automatically
(each pair gives a desirable and an undesirable row). The loss comes from
:mod:`posttrain.losses.kto`:

* ``loss_type="kto"`` — :func:`kto_loss` with the reference point ``z0`` estimated from *mismatched*
  prompt/completion pairs of the batch (prompt i with the completion of row i+1) by
  :func:`kto_kl_estimate`, averaged across processes and clamped at 0;
* ``"apo_zero_unpaired"`` — :func:`kto_loss`'s unpaired APO-zero (no KL pass);
* ``"bco"`` — :func:`bco_loss` with the running reward mean δ (:class:`RunningMean`, saved with
  checkpoints). :class:`~posttrain.trainers.bco.BCOTrainer` is this loss type plus the optional UDM
  density-ratio weights.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from ..losses.tokens import LossSum
from ..losses.kto import RunningMean, bco_loss, kto_kl_estimate, kto_loss
from .base import check_choice
from ..data.streaming import is_streaming
from ..data.preference import concat_rows, kl_rows
from .logprobs import completion_logps
from .preference_base import ReferenceConfig, ReferencePreferenceTrainer

logger = logging.getLogger("posttrain")

KTO_TRAINER_LOSS_TYPES = ("kto", "apo_zero_unpaired", "bco")


@dataclass
class KTOConfig(ReferenceConfig):
    """Configuration of :class:`KTOTrainer`. Field names and defaults follow TRL's ``KTOConfig``."""

    loss_type: str = field(default="kto", metadata={"help": "Loss type.", "choices": list(KTO_TRAINER_LOSS_TYPES)})
    desirable_weight: float = field(default=1.0, metadata={"help": "Weight λ_D of the desirable examples' losses."})
    undesirable_weight: float = field(default=1.0, metadata={"help": "Weight λ_U of the undesirable examples' losses."})

    def __post_init__(self):
        check_choice("loss_type", self.loss_type, KTO_TRAINER_LOSS_TYPES)
        super().__post_init__()


class KTOTrainer(ReferencePreferenceTrainer):
    """KTO (and unpaired APO-zero, BCO) on unpaired or paired preference data.

    Reference policy strategies are those of :class:`~posttrain.trainers.dpo.DPOTrainer` (frozen copy,
    PEFT adapter disabled, ``precompute_ref_log_probs``, ``sync_ref_model``).

    Logs ``kl`` (loss_type ``kto``), ``delta`` (``bco``) and TRL's ``rewards/chosen``,
    ``rewards/rejected``, ``rewards/margins``, ``logps/chosen``, ``logps/rejected``, ``logits/chosen``,
    ``logits/rejected``, where "chosen" means the desirable and "rejected" the undesirable examples;
    each is the mean over all such examples since the last log (batches may hold only one kind).
    """

    config_class = KTOConfig
    _run_suffix = "KTO"
    _paired = False
    _trl_1x_names = True
    _input_columns = ("prompt_input_ids", "completion_input_ids", "prompt_ids", "completion_ids", "label",
                      "kl_completion_input_ids", "reference_logps", "reference_KL_logps")

    def __init__(self, model, ref_model=None, args: KTOConfig | None = None, train_dataset=None, eval_dataset=None,
                 processing_class=None, data_collator=None, callbacks=None, optimizers=(None, None),
                 preprocess_logits_for_metrics=None, peft_config=None, compute_metrics=None,
                 optimizer_cls_and_kwargs=None):
        super().__init__(model, ref_model, args, data_collator, train_dataset, eval_dataset, processing_class,
                         compute_metrics, callbacks, optimizers, optimizer_cls_and_kwargs,
                         preprocess_logits_for_metrics, peft_config)
        if self.args.loss_type == "bco" and self.running is None:
            self.running = RunningMean()
        self._warn_if_unbalanced()

    @property
    def _ref_columns(self) -> tuple[str, ...]:
        return ("reference_logps", "reference_KL_logps") if self._needs_kl_rows(self.args) else ("reference_logps",)

    def _needs_kl_rows(self, args) -> bool:
        return args.loss_type == "kto"

    def _after_tokenize(self, dataset, args):
        if args.precompute_ref_log_probs and self._needs_kl_rows(args) and len(dataset) > 1:
            # precomputed KL reference log-probs need fixed mismatched pairs: row i gets row i+1's completion
            comps = list(dataset["completion_input_ids"])
            dataset = dataset.add_column("kl_completion_input_ids", comps[1:] + comps[:1])
        return dataset

    def _warn_if_unbalanced(self) -> None:
        ds = self.train_dataset
        if ds is None or is_streaming(ds) or "label" not in ds.column_names or self.args.loss_type != "kto":
            return
        labels = list(ds["label"])
        n_d = sum(1 for x in labels if x)
        n_u = len(labels) - n_d
        lo, hi = self.args.desirable_weight * n_d, self.args.undesirable_weight * n_u
        if n_d and n_u and not (1.0 <= max(lo, hi) / max(min(lo, hi), 1e-9) <= 4 / 3):
            logger.warning("KTO: desirable_weight * #desirable (%s) and undesirable_weight * #undesirable (%s) "
                           "differ by more than 4:3; the KTO paper recommends keeping them within [1, 4/3].", lo, hi)

    # -- reference ----------------------------------------------------------------------------------
    def _reference_columns(self, batch):
        rows = self.model_rows(batch)
        if self._needs_kl_rows(self.args):
            both = self.reference_logps(concat_rows(rows, kl_rows(batch))).sum
            n = both.shape[0] // 2
            return {"reference_logps": both[:n], "reference_KL_logps": both[n:]}
        return {"reference_logps": self.reference_logps(rows).sum}

    # -- loss ---------------------------------------------------------------------------------------
    def _compute_loss(self, model, batch) -> LossSum:
        args: KTOConfig = self.args
        labels = batch["label"].bool()
        need_kl = self._needs_kl_rows(args)
        kl_policy = None
        if need_kl:  # gradient-free, so before the forward whose activations are kept for backward
            with torch.no_grad():
                kl_policy = completion_logps(model, kl_rows(batch)).sum
        policy = completion_logps(model, self.model_rows(batch), with_token_stats=True)
        self.record_pooled("entropy", policy.token_entropy)  # over the completion tokens of the batch (as TRL KTO)
        # precomputed, or computed before the policy's forward (PreferenceTrainer.compute_loss)
        ref, kl_ref = batch["reference_logps"], batch.get("reference_KL_logps")

        if args.loss_type == "bco":
            rewards = (args.beta * (policy.sum - ref)).detach()
            self.running.update(self.accelerator.gather(rewards.mean().reshape(1)))
            out = self._bco_loss(policy.sum, ref, labels, batch)
            self.record("delta", self.running.mean)
        else:
            kl = None
            if need_kl:
                kl = kto_kl_estimate(kl_policy, kl_ref, clamp=False)
                kl = self.accelerator.gather(kl.reshape(1)).mean().clamp(min=0)
                self.record("kl", kl)
            out = kto_loss(policy.sum, ref, labels, kl, beta=args.beta, desirable_weight=args.desirable_weight,
                           undesirable_weight=args.undesirable_weight, loss_type=args.loss_type)
        self.keep_predictions(args.beta * (policy.sum - ref), labels.long())
        self.record_pooled("rewards/chosen", out.chosen_rewards)
        self.record_pooled("rewards/rejected", out.rejected_rewards)
        self.record_pooled("logps/chosen", policy.sum.detach()[labels])
        self.record_pooled("logps/rejected", policy.sum.detach()[~labels])
        # token means (like DPO's and TRL's): each row's mean logit weighted by its completion tokens
        self.record_pooled("logits/chosen", policy.mean_logits[labels], policy.count[labels])
        self.record_pooled("logits/rejected", policy.mean_logits[~labels], policy.count[~labels])
        return LossSum(out.losses.sum(), out.losses.numel())

    def _bco_loss(self, logps: torch.Tensor, ref_logps: torch.Tensor, labels: torch.Tensor, batch):
        """``loss_type="bco"``: :func:`~posttrain.losses.kto.bco_loss` with the running reward mean as delta
        (BCOTrainer adds UDM's density-ratio weights)."""
        return bco_loss(logps, ref_logps, labels, beta=self.args.beta, delta=self.running.mean)

    def _finalize_pooled(self, stored) -> None:
        if "rewards/chosen" in stored and "rewards/rejected" in stored:
            stored["rewards/margins"] = [stored["rewards/chosen"][0] - stored["rewards/rejected"][0]]


__all__ = ["KTOConfig", "KTOTrainer"]
