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
