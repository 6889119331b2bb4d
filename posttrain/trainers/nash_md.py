"""Nash Mirror Descent: ``NashMDConfig`` and ``NashMDTrainer`` (TRL-compatible names).

For every prompt the policy samples one completion and its opponent, the token-level geometric mixture of the
policy and the reference (``pi^(1 - c) * pi_ref^c``, ``c = mixture_coef``; sampled by
:func:`posttrain.rollout.generate` with ``mixture_ref``), another. The judge's probability that the policy's
completion wins (or ``sigmoid`` of the score difference) drives the REINFORCE surrogate of
:func:`posttrain.losses.online_preference.nash_md_loss` (Munos et al. 2023). Built on
:class:`~posttrain.trainers.online_dpo.OnlineDPOTrainer`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..losses.online_preference import nash_md_loss
from ..models import unwrap
from ..rollout import generate
from ..rollout.mixture import adapter_disabled
from .base import checkpointing_field
from .online_dpo import OnlineDPOConfig, OnlineDPOTrainer, as_float_list


@dataclass
class NashMDConfig(OnlineDPOConfig):
    """Configuration of :class:`NashMDTrainer`: :class:`~posttrain.trainers.online_dpo.OnlineDPOConfig` plus
    ``mixture_coef`` (TRL's default ``[0.5]``)."""

    gradient_checkpointing: bool = checkpointing_field(False, "as in TRL 0.21, the last TRL with this trainer")

    mixture_coef: list[float] = field(
        default_factory=lambda: [0.5],
        metadata={"help": "Weight of the reference in the geometric mixture that samples the opponent (0: the "
                  "policy, 1: the reference); a list gives one value per epoch."})

    def __post_init__(self):
        self.mixture_coef = as_float_list(self.mixture_coef, "mixture_coef")
        if any(not 0.0 <= c <= 1.0 for c in self.mixture_coef):
            raise ValueError(f"mixture_coef must be in [0, 1], got {self.mixture_coef}.")
        super().__post_init__()


class NashMDTrainer(OnlineDPOTrainer):
    """Nash-MD on prompt-only data; the arguments of :class:`~posttrain.trainers.online_dpo.OnlineDPOTrainer`.

    A judge that can return probabilities (``judge(..., return_scores=True)``, e.g.
    :class:`~posttrain.rollout.LLMPairwiseJudge`) gives P(policy completion wins); other judges give 1 / 0 / 0.5.
    With reward functions or models, P = sigmoid(score(policy) - score(mixture)). Only the policy's completion is
    trained on. Logs TRL's names and definitions: ``loss/kl``, ``loss/score``, ``rewards/probabilities``,
    ``objective/entropy``; ``logps/chosen`` and ``logps/rejected`` (the policy's and the reference's summed log-prob
    of the policy's completion: "rejected" is the reference here), ``rewards/margins`` (their difference, the
    sequence log-ratio) and ``rewards/accuracies`` (the share where the policy's is higher); with scores
    ``rewards/chosen`` and ``rewards/rejected`` (mean score of the policy's and of the mixture's completions; also
    as ``objective/model_scores``, ``objective/mixture_scores``) and ``objective/scores_margin``;
    ``val/model_contain_eos_token``, ``val/ref_contain_eos_token`` (the opponent's, i.e. the mixture's,
    completions), ``mixture_coef``, ``beta``.
    """

    _reference_samples = True  # the mixture samples from policy and reference logits

    config_class = NashMDConfig
    _run_suffix = "NashMD"
    wants_probabilities = True

    @property
    def mixture_coef(self) -> float:
        return self.per_epoch(self.args.mixture_coef)

    def sample_second(self, prompt_ids):
        ref = self.ref_model if self.ref_model is not None else adapter_disabled(unwrap(self.model))
        return generate(self.model, self.tokenizer_, prompt_ids=prompt_ids, batch_size=len(prompt_ids),
                        mixture_ref=ref, mixture_coef=self.mixture_coef, fast=self.args.fast_generation,
                        **self.sampling_kwargs())

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        beta = self.beta
        policy_rows = slice(0, None, self.args.num_generations)  # the first of each pair: the policy's completions; the mixture's are the opponents
        seq, ref_seq, logps, mask = self.sequence_logps(model, inputs, policy_rows)
        ref_logps = inputs["ref_logps"][policy_rows][:, : logps.shape[1]]
        probabilities = inputs["preference"][policy_rows]
        out = nash_md_loss(logps, ref_logps, probabilities, beta=beta, mask=mask)
        loss = self.finish_loss(out.losses.sum(), inputs, out.losses.numel())
        for name, value in out.metrics.items():
            self.record(name, value)
        self.record("rewards/probabilities", probabilities.mean())
        self.record("objective/entropy", -seq.detach().mean())
        margin = (seq.detach() - ref_seq).float()
        self.record("logps/chosen", seq.detach().mean())
        self.record("logps/rejected", ref_seq.mean())
        self.record("rewards/margins", margin.mean())
        self.record("rewards/accuracies", (margin > 0).float().mean())
        if self.judge is None:
            scores = self.groups(inputs["scores"])
            for name in ("rewards/chosen", "objective/model_scores"):
                self.record(name, scores[:, 0].mean())
            for name in ("rewards/rejected", "objective/mixture_scores"):
                self.record(name, scores[:, 1].mean())
            self.record("objective/scores_margin", (scores[:, 0] - scores[:, 1]).mean())
        has_eos = self.groups((~inputs["truncated"]).float())
        self.record("val/model_contain_eos_token", has_eos[:, 0].mean())
        self.record("val/ref_contain_eos_token", has_eos[:, 1].mean())  # TRL's name for the mixture's completions
        self.record("beta", beta)
        self.record("mixture_coef", self.mixture_coef)
        return (loss, {}) if return_outputs else loss


__all__ = ["NashMDConfig", "NashMDTrainer"]
