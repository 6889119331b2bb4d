"""Losses layer: pure tensor functions (log-probs / logits in, losses and metrics out). No model code here."""

from .distill import generalized_jsd_loss
from .online_preference import geometric_mixture_logits, nash_md_loss, xpo_loss
from .policy import (
    gae,
    decoupled_group_rewards,
    off_policy_sequence_mask,
    group_advantages,
    grpo_loss,
    kl_penalty,
    ppo_policy_loss,
    ppo_value_loss,
    rloo_advantages,
    rloo_loss,
    sequence_kl,
)
from .tokens import entropy_from_logits, masked_mean, masked_sum, masked_whiten, selective_log_softmax, top_entropy_mask
from .cpo import cpo_loss, orpo_loss
from .kto import RunningMean, bco_loss, kto_kl_estimate, kto_loss
from .preference import dpo_implicit_rewards, dpo_loss
from .sampler_correction import SAMPLER_IS_MODES, sampler_importance_weights
from .sft import sft_loss_from_logps, sft_token_loss, token_accuracy, token_dft, token_nll
from .reward import (
    bradley_terry_loss,
    center_rewards_penalty,
    reward_accuracy,
    step_accuracy,
    step_classification_loss,
)

__all__ = [
    "generalized_jsd_loss", "geometric_mixture_logits", "nash_md_loss", "xpo_loss", "entropy_from_logits", "gae",
    "decoupled_group_rewards", "off_policy_sequence_mask", "group_advantages", "grpo_loss", "kl_penalty", "masked_mean", "masked_sum", "masked_whiten", "ppo_policy_loss",
    "ppo_value_loss", "rloo_advantages", "rloo_loss", "selective_log_softmax", "sequence_kl", "top_entropy_mask",
    "RunningMean", "bco_loss", "cpo_loss", "dpo_implicit_rewards", "dpo_loss", "kto_kl_estimate", "kto_loss",
    "orpo_loss", "sft_loss_from_logps", "sft_token_loss", "token_accuracy", "token_dft", "token_nll",
]
__all__ += ["SAMPLER_IS_MODES", "sampler_importance_weights"]
__all__ += ["bradley_terry_loss", "center_rewards_penalty", "reward_accuracy", "step_accuracy",
            "step_classification_loss"]
