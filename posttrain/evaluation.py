"""Task evaluation: exact-match accuracy of greedy completions on held-out prompts."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .rollout import generate


def exact_match_accuracy(
    model,
    tokenizer,
    prompts: Sequence,
    answers: Sequence[str],
    *,
    max_new_tokens: int = 16,
    batch_size: int = 64,
    is_correct: Callable[[str, str], bool] | None = None,
) -> tuple[float, list[str]]:
    """Fraction of prompts whose greedy completion equals the answer (after stripping whitespace)."""
    gens = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    check = is_correct or (lambda completion, answer: completion.strip() == answer.strip())
    hits = [bool(check(c, a)) for c, a in zip(gens.texts, answers)]
    return (sum(hits) / max(len(hits), 1)), gens.texts
