"""TRL's ``trl.trainer.sft_trainer``: posttrain's SFTTrainer (:mod:`posttrain.trainers.sft`) and its collators."""

from ..data import DataCollatorForLanguageModeling, DataCollatorForVisionLanguageModeling
from ..trainers.sft import SFTConfig, SFTTrainer

__all__ = ["SFTConfig", "SFTTrainer", "DataCollatorForLanguageModeling", "DataCollatorForVisionLanguageModeling"]
