"""TRL's ``trl.experimental.gkd``: posttrain's GKDTrainer (:mod:`posttrain.trainers.gkd`)."""

from ..trainers.gkd import GKDConfig, GKDTrainer

__all__ = ["GKDConfig", "GKDTrainer"]
