"""TRL's ``trl.experimental.prm``: posttrain's PRMTrainer (:mod:`posttrain.trainers.prm`)."""

from ..trainers.prm import PRMConfig, PRMTrainer

__all__ = ["PRMConfig", "PRMTrainer"]
