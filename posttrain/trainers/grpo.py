"""Group Relative Policy Optimization: ``GRPOConfig`` and ``GRPOTrainer`` (TRL-compatible names).

For every prompt the policy samples ``num_generations`` completions; each is scored by the reward functions,
its advantage is its reward relative to its group (:func:`~posttrain.losses.policy.group_advantages`), and the
policy is trained with the clipped surrogate of :func:`~posttrain.losses.policy.grpo_loss` (GRPO, DAPO,
Dr. GRPO and GSPO variants). Sampling, scoring and batching live in :mod:`posttrain.trainers.online_base`.
"""

from __future__ import annotations

import logging

from dataclasses import dataclass, field

import torch

from ..losses.policy import (GRPO_LOSS_TYPES, SCALE_REWARDS, decoupled_group_rewards, group_advantages, grpo_loss,
                             off_policy_sequence_mask)
from ..losses.tokens import masked_mean, nanstd, top_entropy_mask
from ..losses.sampler_correction import SAMPLER_IS_MODES, sampler_importance_weights
from ..models.moe import collect_aux_loss
from .base import check_choice
from .online_base import OnlineConfig, OnlineTrainer

IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")


MULTI_OBJECTIVE_AGGREGATIONS = ("sum_then_normalize", "normalize_then_sum")
# loss types whose per-token terms are summed over a whole micro- or generation batch (not averaged per sequence)
TOKEN_SUMMED_LOSS_TYPES = ("bnpo", "dr_grpo", "dapo", "cispo")
logger = logging.getLogger("posttrain")


@dataclass
class GRPOConfig(OnlineConfig):
    """Configuration of :class:`GRPOTrainer`. Field names and defaults follow TRL's ``GRPOConfig``
    (``loss_type="dapo"``, ``beta=0``, ``num_generations=8``, ``learning_rate=1e-6``)."""

    epsilon: float = field(default=0.2, metadata={"help": "Lower clip range of the importance ratio (and upper, unless epsilon_high)."})
    epsilon_high: float | None = field(default=None, metadata={"help": "Upper clip range (DAPO's clip-higher, e.g. 0.28; default: epsilon)."})
    delta: float | None = field(default=None, metadata={"help": "Upper bound of the unclipped ratio (two-sided clipping; None: off)."})
    use_bias_correction_kl: bool = field(
        default=True,
        metadata={"help": "With beta > 0: multiply each token's k3 KL by the importance ratio (DeepSeek-V3.2's unbiased "
                  "KL estimate; same value on-policy, a reverse-KL gradient). TRL's default."},
    )
    loss_type: str = field(
        default="dapo",
        metadata={"help": "Loss normalisation: 'grpo' (per-sequence mean), 'bnpo' (tokens of the micro-batch), "
                  "'dr_grpo' (batch size x max_completion_length), 'dapo' (tokens of the whole accumulated batch); "
                  "or another surrogate: 'cispo' (capped, detached importance weights times log-probs; epsilon_high "
                  "is the cap, e.g. 5.0), 'sapo' (a soft sigmoid gate instead of the clip), 'luspo' (each sequence's "
                  "mean weighted by its length, over the sequences; with importance_sampling_level='sequence').",
                  "choices": list(GRPO_LOSS_TYPES)},
    )
    sapo_temperature_pos: float = field(
        default=1.0, metadata={"help": "SAPO: gate temperature for tokens with a positive advantage."})
    sapo_temperature_neg: float = field(
        default=1.05, metadata={"help": "SAPO: gate temperature for tokens with a non-positive advantage."})
    importance_sampling_level: str = field(
        default="token", metadata={"help": "'token' ratios, or one length-normalised ratio per 'sequence' (GSPO).",
                                   "choices": list(IMPORTANCE_SAMPLING_LEVELS)},
    )
    scale_rewards: str = field(
        default="group", metadata={"help": "Divide advantages by the std of the 'group', of the 'batch', or 'none' "
                                   "(true/false mean group/none)."},
    )
    mask_truncated_completions: bool = field(
        default=False, metadata={"help": "Completions that hit max_completion_length without EOS get no loss."})
    top_entropy_quantile: float = field(
        default=1.0, metadata={"help": "Train only on the top fraction of completion tokens by entropy (1: all)."})
    vllm_importance_sampling_correction: bool = field(
        default=True, metadata={"help": "With use_vllm: re-weight the loss by the trainer/vLLM probability ratio of "
                                "the sampled tokens (vLLM's probabilities differ slightly from the trainer's)."})
    vllm_importance_sampling_mode: str = field(
        default="sequence_mask", metadata={"help": "Ratio per 'token' or per 'sequence'; ratios above the cap are "
                                           "clipped ('*_truncate') or dropped ('*_mask').",
                                           "choices": list(SAMPLER_IS_MODES)})
    vllm_importance_sampling_cap: float = field(
        default=3.0, metadata={"help": "Cap C of the vLLM importance-sampling ratio."})
    off_policy_mask_threshold: float | None = field(
        default=None, metadata={"help": "DeepSeek-V3.2's off-policy sequence masking: drop a sequence whose advantage "
                                "is negative when the policy has drifted more than this (mean per-token log-ratio "
                                "of the sampling policy to the current one) from the one that sampled it; e.g. 0.5. "
                                "None: off."})
    multi_objective_aggregation: str = field(
        default="sum_then_normalize", metadata={
            "help": "With several reward functions: 'sum_then_normalize' (GRPO: the weighted sum's advantage) or "
                    "'normalize_then_sum' (GDPO: each function's rewards normalised in their group, then summed with "
                    "the weights and normalised over the batch).", "choices": list(MULTI_OBJECTIVE_AGGREGATIONS)})
    num_generations_eval: int | None = field(
        default=None, metadata={"help": "Completions per prompt in evaluation (default: num_generations)."})
    router_aux_loss_coef: float = field(default=0.001, metadata={"help": (
        "Mixture-of-Experts policies: the weight of the router's load-balancing loss added to the loss (logged as "
        "aux_loss); 0 turns it off. No effect on dense models.")})

    def __post_init__(self):
        if isinstance(self.scale_rewards, bool) or str(self.scale_rewards).lower() in ("true", "false"):
            self.scale_rewards = "group" if str(self.scale_rewards).lower() == "true" else "none"
        check_choice("loss_type", self.loss_type, GRPO_LOSS_TYPES)
        check_choice("importance_sampling_level", self.importance_sampling_level, IMPORTANCE_SAMPLING_LEVELS)
        check_choice("scale_rewards", self.scale_rewards, SCALE_REWARDS)
        check_choice("vllm_importance_sampling_mode", self.vllm_importance_sampling_mode, SAMPLER_IS_MODES)
        check_choice("multi_objective_aggregation", self.multi_objective_aggregation, MULTI_OBJECTIVE_AGGREGATIONS)
        if self.vllm_importance_sampling_cap <= 0:
            raise ValueError(f"vllm_importance_sampling_cap must be > 0, got {self.vllm_importance_sampling_cap}.")
        if self.loss_type == "cispo" and self.epsilon_high is None:
            raise ValueError("loss_type='cispo' caps the importance weights at epsilon_high itself (ScaleRL's eps_max, "
                             "not 1 + eps): give it, e.g. epsilon_high=5.0 (the ScaleRL paper's value). Left to default "
                             "to epsilon (0.2), every weight would be capped at 0.2.")
        if self.sapo_temperature_pos <= 0 or self.sapo_temperature_neg <= 0:
            raise ValueError(f"sapo_temperature_pos and sapo_temperature_neg must be > 0, got "
                             f"{self.sapo_temperature_pos} and {self.sapo_temperature_neg}.")
        if self.epsilon_high is None:
            self.epsilon_high = self.epsilon
        if self.epsilon < 0 or self.epsilon_high < 0:
            raise ValueError(f"epsilon and epsilon_high must be >= 0, got {self.epsilon} and {self.epsilon_high}.")
        if self.off_policy_mask_threshold is not None and self.off_policy_mask_threshold <= 0:
            raise ValueError(f"off_policy_mask_threshold must be > 0 (e.g. 0.5) or None, got "
                             f"{self.off_policy_mask_threshold}.")
        if not 0.0 < self.top_entropy_quantile <= 1.0:
            raise ValueError(f"top_entropy_quantile must be in (0, 1], got {self.top_entropy_quantile}.")
        if self.num_generations < 2:
            raise ValueError(f"GRPO needs num_generations >= 2 (advantages compare the completions of a prompt); "
                             f"got {self.num_generations}.")
        if self.num_generations_eval is not None and self.num_generations_eval < 1:
            raise ValueError(f"num_generations_eval must be >= 1 (or None: num_generations), got "
                             f"{self.num_generations_eval}.")
        super().__post_init__()

    def eval_generations(self) -> int:
        return self.num_generations_eval or self.num_generations


class GRPOTrainer(OnlineTrainer):
    """GRPO on prompt-only data (standard or conversational). ``reward_funcs``: a callable
    ``fn(prompts, completions, **kwargs) -> list[float]``, a reward model (object, name or path), or a list.

    Logs TRL's names: ``reward``, ``reward_std`` (the std of the rewards of the whole generation batch),
    ``rewards/<name>/mean|std``, ``frac_reward_zero_std`` (the share of groups whose rewards all coincide), ``kl``
    (``beta > 0``), ``entropy``, ``clip_ratio/low_mean|high_mean|region_mean`` (``cispo_clip_ratio`` with
    ``loss_type="cispo"``, neither with ``"sapo"``), ``completions/*`` and
    ``num_tokens``.
    """

    config_class = GRPOConfig
    supports_agents = True  # tools=, environment_factory= (docs/agents.md)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.use_router_aux_loss(self.args.router_aux_loss_coef)  # after the reference's copy: it only scores
        if self.args.loss_type == "luspo" and self.args.importance_sampling_level != "sequence":
            logger.warning("loss_type='luspo' is defined with one importance ratio per sequence: set "
                           "importance_sampling_level='sequence' as in the LUSPO paper.")
        if self.args.importance_sampling_level == "sequence" and self.args.loss_type in TOKEN_SUMMED_LOSS_TYPES:
            logger.warning(
                "importance_sampling_level='sequence' with loss_type=%r: that loss sums per-token contributions, which "
                "weights each sequence by its completion length instead of optimising the per-sequence objective "
                "(GSPO, Zheng et al. 2025). loss_type='grpo' (a mean over each sequence's tokens) is GSPO's setup.",
                self.args.loss_type)
    _run_suffix = "GRPO"

    def needs_sampling_logps(self) -> bool:
        return self.args.use_vllm and self.args.vllm_importance_sampling_correction

    def sampler_weights(self, inputs, logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
        """vLLM importance-sampling weights of a micro-batch (None without ``sampling_logps``): the trainer's
        log-probs at sampling time are ``old_logps``, or the current ones when the batch is trained on-policy."""
        if "sampling_logps" not in inputs:
            return None
        old = inputs.get("old_logps")
        trainer_logps = (old if old is not None else logps).detach()
        out = sampler_importance_weights(trainer_logps, inputs["sampling_logps"], mask,
                                         mode=self.args.vllm_importance_sampling_mode,
                                         cap=self.args.vllm_importance_sampling_cap)
        diff = (trainer_logps - inputs["sampling_logps"]).abs()
        self.record("sampling/sampling_logp_difference/mean", masked_mean(diff, mask))
        ratio_mask = mask if out.ratio.shape == mask.shape else mask.any(dim=1, keepdim=True)
        self.record("sampling/importance_sampling_ratio/mean", masked_mean(out.ratio, ratio_mask))
        self.record("sampling/importance_sampling_weight/mean", masked_mean(out.weights, ratio_mask))
        return out.weights

    def combine_rewards(self, per_function: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
        if self.args.multi_objective_aggregation == "normalize_then_sum":
            return decoupled_group_rewards(per_function, self.scorer.reward_weights, self.group_size())
        return rewards

    def process_rewards(self, rewards: torch.Tensor) -> dict[str, torch.Tensor]:
        # GDPO's sums are normalised over the batch (their groups' means are 0 already)
        scale = "batch" if self.args.multi_objective_aggregation == "normalize_then_sum" else self.args.scale_rewards
        adv = group_advantages(rewards, self.group_size(), scale)
        self.record("reward_std", nanstd(rewards).nan_to_num(0.0))  # over the whole generation batch, as TRL 1.x
        self.record("frac_reward_zero_std", adv.frac_reward_zero_std)
        return {"advantages": adv.advantages}

    def loss_items(self, lengths: torch.Tensor, truncated: torch.Tensor) -> torch.Tensor:
        """A completion's tokens; none for a truncated one with ``mask_truncated_completions`` (not trained on)."""
        items = super().loss_items(lengths, truncated)
        if self.args.mask_truncated_completions:
            items[truncated] = 0
        return items

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args = self.args
        with collect_aux_loss(model, self.aux_loss_enabled) as aux:
            logps, mask, entropies = self.token_logps(model, inputs, with_entropy=True)
        if args.mask_truncated_completions:
            mask = mask & ~inputs["truncated"].unsqueeze(1)
        entropy_mask = None
        if args.top_entropy_quantile < 1.0:
            active = entropies[mask]
            if self.accelerator.num_processes > 1:
                padded = self.accelerator.pad_across_processes(active, dim=0, pad_index=float("nan"))
                active = self.accelerator.gather(padded)
                active = active[~torch.isnan(active)]
            entropy_mask = top_entropy_mask(entropies, mask, 1.0 - args.top_entropy_quantile, reference_entropies=active)
        if args.off_policy_mask_threshold is not None:  # the sampler's log-probs (vLLM) or the old policy's, if any
            behaviour = inputs.get("sampling_logps", inputs.get("old_logps"))
            behaviour = logps.detach() if behaviour is None else behaviour
            keep = off_policy_sequence_mask(inputs["advantages"], logps, behaviour, mask, args.off_policy_mask_threshold)
            self.record("off_policy_masked_ratio", 1.0 - keep.float().mean())
            keep = keep.unsqueeze(1).to(logps.dtype)
            entropy_mask = keep if entropy_mask is None else entropy_mask * keep
        out = grpo_loss(
            logps, inputs.get("old_logps"), inputs["advantages"], mask,
            ref_logps=inputs.get("ref_logps"), beta=args.beta, epsilon_low=args.epsilon, epsilon_high=args.epsilon_high,
            loss_type=args.loss_type, importance_sampling_level=args.importance_sampling_level,
            max_completion_length=args.max_completion_length,
            delta=args.delta, entropy_mask=entropy_mask, importance_weights=self.sampler_weights(inputs, logps, mask),
            use_bias_correction_kl=args.use_bias_correction_kl, sapo_temperature_pos=args.sapo_temperature_pos,
            sapo_temperature_neg=args.sapo_temperature_neg,
        )
        for name, value in out.metrics.items():
            self.record(name, value)
        self.record("entropy", masked_mean(entropies, mask))
        loss = self.reduce_loss(out.total, out.count, inputs.get("num_items_in_batch") if out.spans_batch else None)
        loss = self.add_router_aux_loss(loss, aux, model)
        return (loss, {}) if return_outputs else loss


__all__ = ["GRPOConfig", "GRPOTrainer"]
