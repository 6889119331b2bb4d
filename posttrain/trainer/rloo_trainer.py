"""TRL's ``trl.trainer.rloo_trainer``: posttrain's RLOOTrainer (:mod:`posttrain.trainers.rloo`)."""

from ..trainers.rloo import RLOOConfig, RLOOTrainer

__all__ = ["RLOOConfig", "RLOOTrainer"]
