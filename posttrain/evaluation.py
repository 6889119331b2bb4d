"""Task evaluation: exact-match accuracy of greedy (or sampled) completions on held-out prompts."""

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
    temperature: float | None = None,
    num_samples: int = 1,
    seed: int = 0,
) -> tuple[float, list[str]]:
    """Fraction of completions that equal their prompt's answer (after stripping whitespace), and the completions.

    Greedy by default. With ``temperature`` set, ``num_samples`` completions per prompt are sampled (reproducibly,
    from ``seed``) and the result is the mean over all of them: the policy's expected exact match at that
    temperature, the quantity online RL optimises.
    """
    sampling = temperature is not None
    gens = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                    do_sample=sampling, temperature=temperature or 1.0, num_return_sequences=num_samples if sampling else 1,
                    seed=seed if sampling else None)
    k = num_samples if sampling else 1
    check = is_correct or (lambda completion, answer: completion.strip() == answer.strip())
    hits = [bool(check(c, answers[i // k])) for i, c in enumerate(gens.texts)]
    return (sum(hits) / max(len(hits), 1)), gens.texts


def win_rate(
    judge,
    model,
    baseline,
    tokenizer,
    prompts: Sequence,
    *,
    max_new_tokens: int = 16,
    temperature: float = 1.0,
    num_samples: int = 1,
    seed: int = 0,
    batch_size: int = 64,
) -> float:
    """How often a pairwise ``judge`` prefers ``model``'s completion to ``baseline``'s for the same prompt (ties
    count one half): 0.5 means no better than the baseline. Each model samples ``num_samples`` completions per
    prompt at ``temperature`` (from the same ``seed``); the judge sees them as ``[model's, baseline's]`` pairs."""
    def sample(m):
        return generate(m, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, do_sample=True,
                        temperature=temperature, num_return_sequences=num_samples, seed=seed).texts

    ours, theirs = sample(model), sample(baseline)
    repeated = [p for p in prompts for _ in range(num_samples)]
    verdicts = judge.judge(repeated, [[a, b] for a, b in zip(ours, theirs)], shuffle_order=True)
    if len(verdicts) != len(repeated) or any(v not in (-1, 0, 1) for v in verdicts):
        raise ValueError(f"{type(judge).__name__} must return one of 0, 1, -1 per pair; got {verdicts[:8]}...")
    return sum(1.0 if v == 0 else 0.5 if v == -1 else 0.0 for v in verdicts) / max(len(verdicts), 1)
