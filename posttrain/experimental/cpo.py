"""TRL's ``trl.experimental.cpo``: posttrain's CPOTrainer (:mod:`posttrain.trainers.cpo`)."""

from ..trainers.cpo import CPOConfig, CPOTrainer

__all__ = ["CPOConfig", "CPOTrainer"]
