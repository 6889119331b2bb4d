"""TRL's ``trl.experimental.ppo``: posttrain's PPOTrainer (:mod:`posttrain.trainers.ppo`) and value-head model."""

from ...models.value_head import AutoModelForCausalLMWithValueHead, AutoModelForSeq2SeqLMWithValueHead
from ...trainers.ppo import PPOConfig, PPOTrainer

__all__ = ["AutoModelForCausalLMWithValueHead", "AutoModelForSeq2SeqLMWithValueHead", "PPOConfig", "PPOTrainer"]
