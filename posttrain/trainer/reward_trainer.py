"""TRL's ``trl.trainer.reward_trainer``: posttrain's RewardTrainer (:mod:`posttrain.trainers.reward`); its collator of
``chosen_ids``/``rejected_ids`` pairs goes by TRL's name there, ``DataCollatorForPreference``."""

from ..trainers.reward import RewardConfig, RewardDataCollator, RewardTrainer

DataCollatorForPreference = RewardDataCollator

__all__ = ["RewardConfig", "RewardTrainer", "DataCollatorForPreference"]
