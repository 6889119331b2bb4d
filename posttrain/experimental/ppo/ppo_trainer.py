"""TRL's ``trl.experimental.ppo.ppo_trainer``: PPOTrainer and the masked statistics TRL keeps beside it (posttrain's
are in :mod:`posttrain.losses.tokens`)."""

from ...losses.tokens import masked_mean, masked_var, masked_whiten
from ...trainers.ppo import PPOConfig, PPOTrainer

__all__ = ["PPOConfig", "PPOTrainer", "masked_mean", "masked_var", "masked_whiten"]
