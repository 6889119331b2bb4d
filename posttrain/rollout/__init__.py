"""Rollout layer: generation from a policy, reward scoring, built-in reward functions."""

from .best_of_n import BestOfNOutput, BestOfNSampler
from .generation import Generations, encode_prompts, generate
from .judges import (
    AllTrueJudge,
    BaseBinaryJudge,
    BaseJudge,
    BasePairwiseJudge,
    BaseRankJudge,
    JudgeError,
    LLMBinaryJudge,
    LLMPairwiseJudge,
    LLMRankJudge,
    OpenAIPairwiseJudge,
    RewardModelPairwiseJudge,
    RewardModelRankJudge,
)
from .rewards import (
    BUILTIN_REWARDS,
    accuracy_reward,
    format_reward,
    get_length_penalty,
    get_reward_func,
    get_soft_overlong_punishment,
    think_format_reward,
)
from .scoring import RewardFunctionError, RewardScorer, RewardScores, score, score_with_model

__all__ = ["Generations", "encode_prompts", "generate"]
__all__ += ["BestOfNOutput", "BestOfNSampler", "AllTrueJudge", "BaseBinaryJudge", "BaseJudge", "BasePairwiseJudge",
            "BaseRankJudge", "JudgeError", "LLMBinaryJudge", "LLMPairwiseJudge", "LLMRankJudge",
            "OpenAIPairwiseJudge", "RewardModelPairwiseJudge", "RewardModelRankJudge",
            "RewardFunctionError", "RewardScorer", "RewardScores", "score", "score_with_model"]
__all__ += ["BUILTIN_REWARDS", "accuracy_reward", "format_reward", "get_length_penalty", "get_reward_func",
            "get_soft_overlong_punishment", "think_format_reward"]
