"""Direct Preference Optimization: ``DPOConfig`` and ``DPOTrainer`` (TRL-compatible names).

The trainer is the shared preference core (:mod:`.preference_base`) plus the loss
:func:`posttrain.losses.preference.dpo_loss` and its options (loss-type lists with weights, RPO's NLL
term, LD-DPO, WPO weighting, f-divergences, ``bco_pair``'s running reward mean).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..losses.tokens import LossSum
from ..losses.kto import RunningMean
from ..losses.preference import (
    DPO_LOSS_TYPES,
    F_DIVERGENCE_TYPES,
    check_f_divergence,
    dpo_implicit_rewards,
    dpo_loss,
    ld_dpo_pair_logps,
    wpo_weights,
)
from .base import check_choice
from .preference_base import ReferenceConfig, ReferencePreferenceTrainer


@dataclass
class DPOConfig(ReferenceConfig):
    """Configuration of :class:`DPOTrainer`. Field names and defaults follow TRL's ``DPOConfig``.

    ``loss_type`` is a list of names (a single name is accepted and turned into a one-item list); with
    several, the loss is ``Σ_k loss_weights[k] · loss_k`` (e.g. MPO: ``["sigmoid", "bco_pair", "sft"]``).
    """

    loss_type: list[str] = field(
        default_factory=lambda: ["sigmoid"],
        metadata={"help": f"Loss name(s): {', '.join(DPO_LOSS_TYPES)}."},
    )
    loss_weights: list[float] | None = field(default=None, metadata={"help": "One weight per loss type (default 1)."})
    label_smoothing: float = field(default=0.0, metadata={"help": "Label noise rate (cDPO / robust / exo_pair)."})
    rpo_alpha: float | None = field(default=None, metadata={"help": "RPO: add rpo_alpha * NLL(chosen) to the loss."})
    ld_alpha: float | None = field(
        default=None, metadata={"help": "LD-DPO: weight of the completion tokens beyond the shorter answer of the pair "
                                        "(policy and reference log-probs alike)."}
    )
    use_weighting: bool = field(default=False, metadata={"help": "WPO: weight each pair by its policy probability."})
    f_divergence_type: str = field(
        default="reverse_kl", metadata={"help": "f-DPO divergence.", "choices": list(F_DIVERGENCE_TYPES)}
    )
    f_alpha_divergence_coef: float = field(
        default=0.5, metadata={"help": "a of the alpha-divergence, f'(u) = (u^(a-1) - 1)/(a-1) (TRL's convention; the "
                                       "f-DPO paper's alpha is 1 - a): 1 is reverse KL, 0 forward KL."})
    reference_free: bool = field(default=False, metadata={"help": "Use a uniform reference (no reference model)."})
    discopop_tau: float = field(default=0.05, metadata={"help": "Temperature of the DiscoPOP loss."})

    def __post_init__(self):
        if isinstance(self.loss_type, str):
            self.loss_type = [self.loss_type]
        self.loss_type = list(self.loss_type)
        if not self.loss_type:
            raise ValueError("loss_type must name at least one loss.")
        for name in self.loss_type:
            check_choice("loss_type", name, DPO_LOSS_TYPES)
        if self.loss_weights is not None:
            if isinstance(self.loss_weights, (int, float)):
                self.loss_weights = [float(self.loss_weights)]
            self.loss_weights = [float(w) for w in self.loss_weights]
            if len(self.loss_weights) != len(self.loss_type):
                raise ValueError(f"loss_weights has {len(self.loss_weights)} entries for {len(self.loss_type)} loss "
                                 f"types {self.loss_type}; give one weight per loss type.")
        check_choice("f_divergence_type", self.f_divergence_type, F_DIVERGENCE_TYPES)
        check_f_divergence(self.loss_type, self.f_divergence_type)
        if self.reference_free and (self.precompute_ref_log_probs or self.sync_ref_model):
            raise ValueError("reference_free=True uses no reference model; precompute_ref_log_probs and "
                             "sync_ref_model do not apply.")
        super().__post_init__()


class DPOTrainer(ReferencePreferenceTrainer):
    """DPO and its variants on paired preference data (explicit or implicit prompt, standard or conversational).

    Reference policy: ``ref_model`` (a model or a name/path); by default a frozen copy of the initial
    policy; with a PEFT adapter and no ``ref_model``, the base model with the adapter disabled;
    ``precompute_ref_log_probs=True`` computes the reference log-probs once before training;
    ``reference_free=True`` uses none.

    Logs ``rewards/chosen``, ``rewards/rejected``, ``rewards/accuracies``, ``rewards/margins``,
    ``logps/chosen``, ``logps/rejected``, ``logits/chosen``, ``logits/rejected`` (and ``nll_loss`` with
    ``rpo_alpha``).
    """

    config_class = DPOConfig
    _run_suffix = "DPO"
    _trl_1x_names = True
    _paired = True
    _ref_columns = ("ref_chosen_logps", "ref_rejected_logps")

    def __init__(self, model, ref_model=None, args: DPOConfig | None = None, data_collator=None, train_dataset=None,
                 eval_dataset=None, processing_class=None, compute_metrics=None, callbacks=None,
                 optimizers=(None, None), optimizer_cls_and_kwargs=None, preprocess_logits_for_metrics=None,
                 peft_config=None):
        super().__init__(model, ref_model, args, data_collator, train_dataset, eval_dataset, processing_class,
                         compute_metrics, callbacks, optimizers, optimizer_cls_and_kwargs,
                         preprocess_logits_for_metrics, peft_config)
        if "bco_pair" in self.args.loss_type:
            self.running = RunningMean()

    def _wants_reference(self) -> bool:
        return not self.args.reference_free

    def _reference_columns(self, batch):
        ref = self.reference_logps(self.model_rows(batch))
        chosen, rejected = self._pair_logps(ref)
        return {"ref_chosen_logps": chosen, "ref_rejected_logps": rejected}

    def _pair_logps(self, logps) -> tuple[torch.Tensor, torch.Tensor]:
        """The summed log-probs of the chosen and rejected halves, or with ``ld_alpha`` their LD-DPO form (the same
        for the policy and the reference, so the implicit reward is 0 while the policy equals the reference)."""
        n = logps.sum.shape[0] // 2
        if self.args.ld_alpha is None:
            return logps.sum[:n], logps.sum[n:]
        tok, mask = logps.per_token()
        return ld_dpo_pair_logps(tok[:n], mask[:n], tok[n:], mask[n:], self.args.ld_alpha)

    def _dataset_key(self, dataset) -> str:
        key = super()._dataset_key(dataset)
        return key if self.args.ld_alpha is None else f"{key}-ld{self.args.ld_alpha:g}"

    def _compute_loss(self, model, batch) -> LossSum:
        args: DPOConfig = self.args
        rows = self.model_rows(batch)
        policy = self._policy_logps(model, rows)
        n = policy.sum.shape[0] // 2
        ref_c = ref_r = None
        if not args.reference_free:  # precomputed, or computed before the policy's forward (compute_loss)
            ref_c, ref_r = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
        chosen, rejected = self._pair_logps(policy)

        weights = None
        if args.use_weighting:
            tok, mask = policy.per_token(policy.token_logps.detach())
            lssp, _ = policy.per_token(policy.log_sum_sq_probs)
            weights = wpo_weights(tok[:n], lssp[:n], mask[:n], tok[n:], lssp[n:], mask[n:])

        bco_delta = None
        if self.running is not None:
            rc, rr = dpo_implicit_rewards(chosen, rejected, ref_c, ref_r, beta=args.beta,
                                          reference_free=args.reference_free)
            self.running.update(self.accelerator.gather(torch.cat([rc, rr]).mean().reshape(1)))
            bco_delta = self.running.mean

        out = dpo_loss(chosen, rejected, ref_c, ref_r, beta=args.beta, loss_type=args.loss_type,
                       loss_weights=args.loss_weights, label_smoothing=args.label_smoothing,
                       f_divergence_type=args.f_divergence_type, f_alpha_divergence_coef=args.f_alpha_divergence_coef,
                       reference_free=args.reference_free, bco_delta=bco_delta, discopop_tau=args.discopop_tau,
                       weights=weights, chosen_lengths=policy.count[:n], rejected_lengths=policy.count[n:])
        total = out.losses.sum()
        if args.rpo_alpha is not None:  # RPO: the chosen completions' token-mean NLL, added to every pair's loss
            nll = self.chosen_nll(policy, n)
            total = total + n * args.rpo_alpha * nll
            self.record("nll_loss", nll)
        self.record_pair_metrics(out.chosen_rewards, out.rejected_rewards, chosen, rejected, policy)
        return LossSum(total, n)

    def _policy_logps(self, model, rows):
        from .logprobs import completion_logps

        return completion_logps(model, rows, with_log_sum_sq_probs=self.args.use_weighting, with_token_stats=True)


__all__ = ["DPOConfig", "DPOTrainer"]
