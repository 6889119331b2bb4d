"""TRL's ``trl.trainer.grpo_trainer``: posttrain's GRPOTrainer (:mod:`posttrain.trainers.grpo`)."""

from ..trainers.grpo import GRPOConfig, GRPOTrainer

__all__ = ["GRPOConfig", "GRPOTrainer"]
