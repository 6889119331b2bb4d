"""TRL's ``trl.experimental.ppo``: posttrain's PPOTrainer (:mod:`posttrain.trainers.ppo`) and value-head model."""

from ..models.value_head import AutoModelForCausalLMWithValueHead
from ..trainers.ppo import PPOConfig, PPOTrainer

__all__ = ["AutoModelForCausalLMWithValueHead", "PPOConfig", "PPOTrainer"]
