"""Rollout layer: generation from a policy (and, later, reward scoring)."""

from .generation import Generations, encode_prompts, generate

__all__ = ["Generations", "encode_prompts", "generate"]
