"""TRL's ``trl.trainer.dpo_trainer``: posttrain's DPOTrainer (:mod:`posttrain.trainers.dpo`) and its collators."""

from ..data.preference import DataCollatorForPreference, DataCollatorForVisionPreference
from ..trainers.dpo import DPOConfig, DPOTrainer

__all__ = ["DPOConfig", "DPOTrainer", "DataCollatorForPreference", "DataCollatorForVisionPreference"]
