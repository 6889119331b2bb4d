"""TRL's ``trl.experimental.orpo``: posttrain's ORPOTrainer (:mod:`posttrain.trainers.orpo`)."""

from ..trainers.orpo import ORPOConfig, ORPOTrainer

__all__ = ["ORPOConfig", "ORPOTrainer"]
