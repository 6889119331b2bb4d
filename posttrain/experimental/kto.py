"""TRL's ``trl.experimental.kto``: posttrain's KTOTrainer (:mod:`posttrain.trainers.kto`)."""

from ..trainers.kto import KTOConfig, KTOTrainer

__all__ = ["KTOConfig", "KTOTrainer"]
