"""posttrain: post-training for transformer language models.

Public names are imported lazily so that ``import posttrain`` (and the CLI's ``--help``) stays fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "DPOConfig": "posttrain.trainers.dpo",
    "DPOTrainer": "posttrain.trainers.dpo",
    "CPOConfig": "posttrain.trainers.cpo",
    "CPOTrainer": "posttrain.trainers.cpo",
    "ORPOConfig": "posttrain.trainers.orpo",
    "ORPOTrainer": "posttrain.trainers.orpo",
    "KTOConfig": "posttrain.trainers.kto",
    "KTOTrainer": "posttrain.trainers.kto",
    "BCOConfig": "posttrain.trainers.bco",
    "BCOTrainer": "posttrain.trainers.bco",
    "SFTConfig": "posttrain.trainers.sft",
    "SFTTrainer": "posttrain.trainers.sft",
    "ModelConfig": "posttrain.models.loading",
    "TrainingDivergedError": "posttrain.trainers.run_dir",
    "CheckpointWriteError": "posttrain.trainers.run_dir",
    "OutputDirError": "posttrain.trainers.run_dir",
    "ScriptArguments": "posttrain.scripts.args",
    "create_reference_model": "posttrain.models.sharding",
    # TRL's data utilities, under TRL's names (posttrain/data_utils.py)
    **{name: "posttrain.data_utils" for name in (
        "apply_chat_template", "extract_prompt", "is_conversational", "is_conversational_from_value",
        "maybe_apply_chat_template", "maybe_convert_to_chatml", "maybe_extract_prompt", "maybe_unpair_preference_dataset",
        "pack_dataset", "prepare_multimodal_messages", "prepare_multimodal_messages_vllm", "unpair_preference_dataset")},
    "PosttrainParser": "posttrain.scripts.args",
    "DataCollatorForLanguageModeling": "posttrain.data.collators",
    "DataCollatorForVisionLanguageModeling": "posttrain.data.vision_collator",
    "RewardConfig": "posttrain.trainers.reward",
    "RewardTrainer": "posttrain.trainers.reward",
    "PRMConfig": "posttrain.trainers.prm",
    "PRMTrainer": "posttrain.trainers.prm",
    "GRPOConfig": "posttrain.trainers.grpo",
    "GRPOTrainer": "posttrain.trainers.grpo",
    "RLOOConfig": "posttrain.trainers.rloo",
    "RLOOTrainer": "posttrain.trainers.rloo",
    "PPOConfig": "posttrain.trainers.ppo",
    "PPOTrainer": "posttrain.trainers.ppo",
    "DDPOConfig": "posttrain.trainers.ddpo",
    "DDPOTrainer": "posttrain.trainers.ddpo",
    "AlignPropConfig": "posttrain.trainers.alignprop",
    "AlignPropTrainer": "posttrain.trainers.alignprop",
    "GKDConfig": "posttrain.trainers.gkd",
    "GKDTrainer": "posttrain.trainers.gkd",
    "OnlineDPOConfig": "posttrain.trainers.online_dpo",
    "OnlineDPOTrainer": "posttrain.trainers.online_dpo",
    "XPOConfig": "posttrain.trainers.xpo",
    "XPOTrainer": "posttrain.trainers.xpo",
    "NashMDConfig": "posttrain.trainers.nash_md",
    "NashMDTrainer": "posttrain.trainers.nash_md",
    "AutoModelForCausalLMWithValueHead": "posttrain.models.value_head",
    "AutoModelForSeq2SeqLMWithValueHead": "posttrain.models.value_head",
    "BestOfNSampler": "posttrain.rollout.best_of_n",
    "BasePairwiseJudge": "posttrain.rollout.judges",
    "BaseRankJudge": "posttrain.rollout.judges",
    "BaseBinaryJudge": "posttrain.rollout.judges",
    "AllTrueJudge": "posttrain.rollout.judges",
    "OpenAIPairwiseJudge": "posttrain.rollout.judges",
    "RewardModelPairwiseJudge": "posttrain.rollout.judges",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'posttrain' has no attribute {name!r}")


def __dir__():
    return __all__
