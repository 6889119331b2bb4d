"""TRL's ``trl.experimental.bco``: posttrain's BCOTrainer (:mod:`posttrain.trainers.bco`)."""

from ..trainers.bco import BCOConfig, BCOTrainer

__all__ = ["BCOConfig", "BCOTrainer"]
