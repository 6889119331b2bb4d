"""TRL's ``trl.experimental.xpo``: posttrain's XPOTrainer (:mod:`posttrain.trainers.xpo`)."""

from ..trainers.xpo import XPOConfig, XPOTrainer

__all__ = ["XPOConfig", "XPOTrainer"]
