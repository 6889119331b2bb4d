"""Best-of-N sampling: draw N completions per prompt, score them, keep the best.

Best-of-N (rejection sampling against a reward; Nakano et al., 2021, WebGPT, Sec. 4; Stiennon et al., 2020) is the
simplest way to turn a reward into better outputs without training: for each prompt,

1. sample ``sample_size`` completions from the policy (one batched call of :func:`posttrain.rollout.generate`,
   each prompt repeated ``sample_size`` times, ``do_sample=True``);
2. score them with :class:`~posttrain.rollout.scoring.RewardScorer` (reward models and/or Python reward functions,
   weighted);
3. return the ``n_candidates`` highest-scoring completions, best first.

With a ``seed`` the result is reproducible (same prompts, same seed -> same completions and scores).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .generation import generate
from .scoring import RewardScorer, completion_for_model


@dataclass
class BestOfNOutput:
    """Result of :meth:`BestOfNSampler.generate`, one entry per prompt."""

    completions: list[list[str]]
    """The ``n_candidates`` best completions of each prompt, best first."""
    scores: list[list[float]]
    """Their (weighted total) rewards."""
    all_completions: list[list[str]]
    """All ``sample_size`` sampled completions of each prompt, in sampling order."""
    all_scores: list[list[float]]
    """Their rewards."""


class BestOfNSampler:
    """Generate ``sample_size`` completions per prompt and keep the ``n_candidates`` with the highest reward.

    Args:
        model: the policy (a causal LM, possibly PEFT-wrapped).
        tokenizer: its tokenizer.
        reward_funcs: what :class:`~posttrain.rollout.scoring.RewardScorer` accepts (a reward model, a callable, a
            list of them), or a ready ``RewardScorer``.
        reward_processing_classes, reward_weights: passed to ``RewardScorer``.
        sample_size: N, completions sampled per prompt.
        n_candidates: completions returned per prompt (``<= sample_size``).
        max_new_tokens, temperature, top_p, top_k: sampling settings (``do_sample=True``).
        batch_size: generation batch size (rows of ``prompt x sample``).
        seed: sampling seed; None draws from the global torch RNG.

    Conversational prompts (message lists) get each completion as ``[{"role": "assistant", "content": text}]`` when
    scored by a callable, as in TRL's reward functions; ``BestOfNOutput`` always holds the completion texts.
    """

    def __init__(self, model, tokenizer, reward_funcs, *, reward_processing_classes=None,
                 reward_weights: Sequence[float] | None = None, sample_size: int = 4, n_candidates: int = 1,
                 max_new_tokens: int = 32, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                 batch_size: int = 64, seed: int | None = None):
        if sample_size < 1:
            raise ValueError(f"sample_size must be >= 1, got {sample_size}.")
        if not 1 <= n_candidates <= sample_size:
            raise ValueError(f"n_candidates must be between 1 and sample_size={sample_size}, got {n_candidates}.")
        self.model, self.tokenizer = model, tokenizer
        self.scorer = reward_funcs if isinstance(reward_funcs, RewardScorer) else RewardScorer(
            reward_funcs, reward_processing_classes, reward_weights)
        self.sample_size, self.n_candidates = sample_size, n_candidates
        self.generation_kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, temperature=temperature,
                                                      top_p=top_p, top_k=top_k, batch_size=batch_size)
        self.seed = seed

    def generate(self, prompts: Sequence, seed: int | None = None, **columns) -> BestOfNOutput:
        """Best-of-N for each prompt. ``columns`` are extra per-prompt dataset columns given to reward functions
        (e.g. ``answer=[...]``); ``seed`` overrides the sampler's seed for this call."""
        n, k = len(prompts), self.sample_size
        for key, values in columns.items():
            if len(values) != n:
                raise ValueError(f"Column {key!r} has {len(values)} values for {n} prompts.")
        repeated = [p for p in prompts for _ in range(k)]
        seed = self.seed if seed is None else seed
        gens = generate(self.model, self.tokenizer, repeated, do_sample=True, seed=seed, **self.generation_kwargs)
        texts = gens.texts
        scored_completions = [completion_for_model(p, t) for p, t in zip(repeated, texts)]
        extra = {key: [v for v in values for _ in range(k)] for key, values in columns.items()}
        rewards = self.scorer(repeated, scored_completions, completion_ids=gens.completion_ids, **extra).rewards
        rewards = torch.nan_to_num(rewards, nan=float("-inf")).view(n, k)
        order = torch.argsort(rewards, dim=1, descending=True, stable=True)[:, : self.n_candidates]
        all_completions = [texts[i * k : (i + 1) * k] for i in range(n)]
        all_scores = rewards.tolist()
        return BestOfNOutput(
            completions=[[all_completions[i][j] for j in order[i].tolist()] for i in range(n)],
            scores=[[all_scores[i][j] for j in order[i].tolist()] for i in range(n)],
            all_completions=all_completions,
            all_scores=all_scores,
        )


__all__ = ["BestOfNOutput", "BestOfNSampler"]
