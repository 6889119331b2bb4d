"""TRL's ``trl.trainer.kto_trainer``: posttrain's KTOTrainer (:mod:`posttrain.trainers.kto`) and its collator."""

from ..data.preference import DataCollatorForUnpairedPreference
from ..trainers.kto import KTOConfig, KTOTrainer

__all__ = ["KTOConfig", "KTOTrainer", "DataCollatorForUnpairedPreference"]
