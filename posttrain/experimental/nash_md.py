"""TRL's ``trl.experimental.nash_md``: posttrain's NashMDTrainer (:mod:`posttrain.trainers.nash_md`)."""

from ..trainers.nash_md import NashMDConfig, NashMDTrainer

__all__ = ["NashMDConfig", "NashMDTrainer"]
