"""REINFORCE Leave-One-Out: ``RLOOConfig`` and ``RLOOTrainer`` (TRL-compatible names).

For every prompt the policy samples ``num_generations`` (k) completions. Each completion's reward is its score
(clipped to ``reward_clip_range``) minus ``beta`` times its sequence KL to the reference policy (the KL is
folded into the reward, Ahmadian et al. 2024, Sec. 3); its advantage is that reward minus the mean reward of the
other k - 1 completions of its prompt (:func:`~posttrain.losses.policy.rloo_advantages`); the whole completion
is one action, trained with the (optionally clipped) sequence-ratio loss of
:func:`~posttrain.losses.policy.rloo_loss`. Sampling, scoring and batching live in
:mod:`posttrain.trainers.online_base`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..losses.policy import rloo_advantages, rloo_loss, sequence_kl
from ..losses.tokens import masked_mean, nanstd
from .online_base import OnlineConfig, OnlineTrainer


@dataclass
class RLOOConfig(OnlineConfig):
    """Configuration of :class:`RLOOTrainer`. Field names follow TRL's ``RLOOConfig``; ``num_generations`` is
    the k of the paper (TRL's older ``rloo_k``)."""

    num_generations: int = field(default=2, metadata={"help": "Completions per prompt (k >= 2)."})
    beta: float = field(default=0.05, metadata={"help": "KL coefficient: reward - beta * KL(policy || reference) per sequence; 0: no reference."})
    epsilon: float = field(default=0.2, metadata={"help": "Lower clip range of the sequence importance ratio (and upper, unless epsilon_high)."})
    epsilon_high: float | None = field(default=None, metadata={"help": "Upper clip range (default: epsilon)."})
    normalize_advantages: bool = field(default=False, metadata={"help": "Standardise the advantages over the generation batch."})
    num_generations_eval: int | None = field(
        default=None, metadata={"help": "Completions per prompt in evaluation (default: num_generations)."})
    mask_truncated_completions: bool = field(
        default=False, metadata={"help": "Completions that hit max_completion_length without EOS get no loss."})
    reward_clip_range: list[float] | None = field(
        default=None, metadata={"help": "Clip scores to [low, high] before the KL penalty (e.g. -10 10); None: no clipping."})

    def __post_init__(self):
        if self.num_generations < 2:
            raise ValueError(f"RLOO needs num_generations >= 2 (the baseline of a completion is the mean reward of the "
                             f"other completions of its prompt); got {self.num_generations}.")
        if self.reward_clip_range is not None:
            if len(self.reward_clip_range) != 2 or self.reward_clip_range[0] > self.reward_clip_range[1]:
                raise ValueError(f"reward_clip_range must be [low, high] with low <= high, got {self.reward_clip_range}.")
            self.reward_clip_range = [float(x) for x in self.reward_clip_range]
        if self.epsilon_high is None:
            self.epsilon_high = self.epsilon
        if self.num_generations_eval is not None and self.num_generations_eval < 1:
            raise ValueError(f"num_generations_eval must be >= 1 (or None: num_generations), got "
                             f"{self.num_generations_eval}.")
        super().__post_init__()

    def eval_generations(self) -> int:
        return self.num_generations_eval or self.num_generations


class RLOOTrainer(OnlineTrainer):
    """RLOO on prompt-only data (standard or conversational); ``reward_funcs`` as for
    :class:`~posttrain.GRPOTrainer` (callables, reward models, or a list).

    Logs TRL's names with TRL 1.x's definitions: ``reward`` and ``reward_std`` (mean and std of the scores of the
    whole generation batch, before clipping and the KL penalty), ``rewards/<name>/mean|std``,
    ``frac_reward_zero_std`` (the share of groups whose KL-shaped rewards all coincide: no advantage), ``kl``
    (``beta > 0``: the per-token KL estimate averaged over all completion tokens), ``entropy``,
    ``clip_ratio/low_mean|high_mean|region_mean``, ``completions/*``, ``num_tokens``; and the legacy RLOO names
    ``objective/scores`` (clipped scores), ``objective/kl`` (the mean *sequence* KL, the one in the reward),
    ``objective/non_score_reward``, ``objective/rlhf_reward``.
    """

    config_class = RLOOConfig
    supports_agents = True  # tools=, environment_factory= (docs/agents.md)
    _run_suffix = "RLOO"

    def _needs_old_logps_for_rewards(self) -> bool:
        return self.args.beta != 0.0  # the KL penalty uses the sampling policy's log-probs

    def score_completions(self, rows, prompts, completions, completion_ids):
        rewards = super().score_completions(rows, prompts, completions, completion_ids)
        self.record("reward_std", nanstd(rewards).nan_to_num(0.0))  # of the scores, as ``reward``
        return rewards

    def shape_rewards(self, rewards, batches):
        args = self.args
        scores = rewards
        if args.reward_clip_range is not None:
            scores = scores.clamp(*args.reward_clip_range)
        self.record("objective/scores", self._gather(scores).mean())
        if args.beta == 0.0:
            return scores
        masks = [self.completion_token_mask(b) for b in batches]
        kl = torch.cat([sequence_kl(b["old_logps"], b["ref_logps"], m) for b, m in zip(batches, masks)])
        token_count = [m.sum(dim=1) for m in masks]
        all_kl = self._gather(kl)
        all_tokens = self._gather(torch.cat(token_count).float())
        self.record("objective/kl", all_kl.mean())
        self.record("kl", all_kl.sum() / all_tokens.sum().clamp(min=1.0))  # token mean (TRL 1.x's `kl`)
        self.record("objective/non_score_reward", -args.beta * all_kl.mean())
        shaped = scores - args.beta * kl
        self.record("objective/rlhf_reward", self._gather(shaped).mean())
        return shaped

    def process_rewards(self, rewards: torch.Tensor) -> dict[str, torch.Tensor]:
        k = self.group_size()
        if k == 1:  # evaluation with num_generations_eval=1: no other completion to be the baseline
            self.record("frac_reward_zero_std", 1.0)
            return {"advantages": torch.zeros_like(rewards)}
        group_std = self.groups(rewards).std(dim=1)
        self.record("frac_reward_zero_std", torch.isclose(group_std, torch.zeros_like(group_std)).float().mean())
        return {"advantages": rloo_advantages(rewards, k, normalize=self.args.normalize_advantages)}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args = self.args
        logps, mask, entropies = self.token_logps(model, inputs, with_entropy=True)
        if args.mask_truncated_completions:  # their sequences still count in the mean over sequences, as 0 (TRL)
            mask = mask & ~inputs["truncated"].unsqueeze(1)
        out = rloo_loss(logps, inputs.get("old_logps"), inputs["advantages"], mask,
                        epsilon_low=args.epsilon, epsilon_high=args.epsilon_high)
        for name, value in out.metrics.items():
            self.record(name, value)
        self.record("entropy", masked_mean(entropies, mask))
        loss = self.reduce_loss(out.total, out.count)  # a mean over this micro-batch's sequences
        return (loss, {}) if return_outputs else loss


__all__ = ["RLOOConfig", "RLOOTrainer"]
