"""Rollout layer: generation from a policy (and, later, reward scoring)."""

from .best_of_n import BestOfNOutput, BestOfNSampler
from .generation import Generations, encode_prompts, generate
from .judges import (
    AllTrueJudge,
    BaseBinaryJudge,
    BaseJudge,
    BasePairwiseJudge,
    BaseRankJudge,
    JudgeError,
    OpenAIPairwiseJudge,
    RewardModelPairwiseJudge,
    RewardModelRankJudge,
)
from .scoring import RewardFunctionError, RewardScorer, RewardScores, score, score_with_model

__all__ = ["Generations", "encode_prompts", "generate"]
__all__ += ["BestOfNOutput", "BestOfNSampler", "AllTrueJudge", "BaseBinaryJudge", "BaseJudge", "BasePairwiseJudge",
            "BaseRankJudge", "JudgeError", "OpenAIPairwiseJudge", "RewardModelPairwiseJudge", "RewardModelRankJudge",
            "RewardFunctionError", "RewardScorer", "RewardScores", "score", "score_with_model"]
