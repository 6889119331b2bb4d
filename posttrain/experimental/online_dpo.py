"""TRL's ``trl.experimental.online_dpo``: posttrain's OnlineDPOTrainer (:mod:`posttrain.trainers.online_dpo`)."""

from ..trainers.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

__all__ = ["OnlineDPOConfig", "OnlineDPOTrainer"]
