"""Trainers: thin compositions of the data, models, losses and rollout layers."""

from .base import BaseTrainer, PosttrainConfig
from .sft import SFTConfig, SFTTrainer
from .dpo import DPOConfig, DPOTrainer
from .cpo import CPOConfig, CPOTrainer
from .orpo import ORPOConfig, ORPOTrainer
from .kto import KTOConfig, KTOTrainer
from .bco import BCOConfig, BCOTrainer
from .reward import RewardConfig, RewardTrainer
from .prm import PRMConfig, PRMTrainer
from .gkd import GKDConfig, GKDTrainer
from .online_dpo import OnlineDPOConfig, OnlineDPOTrainer
from .xpo import XPOConfig, XPOTrainer
from .nash_md import NashMDConfig, NashMDTrainer
from .grpo import GRPOConfig, GRPOTrainer
from .rloo import RLOOConfig, RLOOTrainer
from .ppo import PPOConfig, PPOTrainer

__all__ = ["BaseTrainer", "PosttrainConfig", "SFTConfig", "SFTTrainer"]
__all__ += ["DPOConfig", "DPOTrainer"]
__all__ += ["CPOConfig", "CPOTrainer", "ORPOConfig", "ORPOTrainer"]
__all__ += ["KTOConfig", "KTOTrainer", "BCOConfig", "BCOTrainer"]
__all__ += ["RewardConfig", "RewardTrainer", "PRMConfig", "PRMTrainer"]
__all__ += ["GRPOConfig", "GRPOTrainer"]
__all__ += ["GKDConfig", "GKDTrainer"]
__all__ += ["OnlineDPOConfig", "OnlineDPOTrainer", "XPOConfig", "XPOTrainer", "NashMDConfig", "NashMDTrainer"]
__all__ += ["RLOOConfig", "RLOOTrainer"]
__all__ += ["PPOConfig", "PPOTrainer"]
