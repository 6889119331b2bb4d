"""Kit tasks for agents: a tool the model cannot do without, and a multi-turn environment.

* **multiply with a tool** — "What is 37*58?": the model calls ``multiply(a=37, b=58)`` (the Hermes/Qwen
  ``<tool_call>`` format of the kit's chat template), reads the result and answers with it. A tiny model cannot
  multiply two-digit numbers itself; it can copy them into a call and copy the result back.
  :func:`tool_use_rows` writes demonstrations (SFT, ``messages`` + ``tools`` columns; a share of them with wrong
  arguments, so that a model trained on them is right only part of the time) and :func:`tool_prompt_rows` prompts with
  their ``answer`` (GRPO); :func:`tool_answer_reward` checks the final answer.
* **guess the number** — :class:`GuessNumberEnv`, an episodic environment (``reset``/``step``): the model guesses a
  number from 1 to ``high``, hears "higher" or "lower", and is rewarded for finding it; more turns cost.

Pure Python (no torch), cheap to import.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from typing import Any

__all__ = ["multiply", "MULTIPLY_SCHEMA", "tool_use_rows", "tool_prompt_rows", "tool_answer_reward", "final_answer",
           "GuessNumberEnv", "guess_prompt_rows", "guess_demo_rows", "openenv_guess_env"]


def multiply(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
        a: The first factor.
        b: The second factor.
    """
    return int(a) * int(b)


MULTIPLY_SCHEMA = {"type": "function", "function": {
    "name": "multiply", "description": "Multiply two integers.",
    "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                   "required": ["a", "b"]}}}


def _question(a: int, b: int) -> str:
    return f"What is {a}*{b}?"


def _pairs(n: int, seed: int, exclude: set[tuple[int, int]] = frozenset()) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    out: list[tuple[int, int]] = []
    seen = set(exclude)
    while len(out) < n:
        pair = (rng.randint(10, 99), rng.randint(10, 99))
        if pair not in seen:
            seen.add(pair)
            out.append(pair)
    return out


def tool_use_rows(n: int, seed: int = 0, wrong_fraction: float = 0.0,
                  exclude: Sequence[tuple[int, int]] = ()) -> list[dict[str, Any]]:
    """SFT demonstrations: user question, assistant call, tool result, assistant answer (the result). With
    ``wrong_fraction``, that share calls with one argument off by a few (so the answer is wrong, but consistent with
    the tool's result)."""
    rng = random.Random(seed + 1)
    rows = []
    for a, b in _pairs(n, seed, set(exclude)):
        x, y = a, b
        if rng.random() < wrong_fraction:
            if rng.random() < 0.5:
                x = min(99, max(10, a + rng.choice([-3, -2, -1, 1, 2, 3])))
            else:
                y = min(99, max(10, b + rng.choice([-3, -2, -1, 1, 2, 3])))
        result = multiply(x, y)
        rows.append({"messages": [
            {"role": "user", "content": _question(a, b)},
            {"role": "assistant", "content": "",
             "tool_calls": [{"type": "function", "function": {"name": "multiply", "arguments": {"a": x, "b": y}}}]},
            {"role": "tool", "name": "multiply", "content": str(result)},
            {"role": "assistant", "content": str(result)}],
            "tools": json.dumps([MULTIPLY_SCHEMA])})
    return rows


def tool_prompt_rows(n: int, seed: int = 1, exclude: Sequence[tuple[int, int]] = ()) -> list[dict[str, Any]]:
    """Prompts (``prompt`` messages) with their ``answer``, for GRPO with the ``multiply`` tool and for evaluation."""
    return [{"prompt": [{"role": "user", "content": _question(a, b)}], "answer": str(a * b)}
            for a, b in _pairs(n, seed, set(exclude))]


def final_answer(completion: Any) -> str:
    """The text of a completion's last assistant message (a string completion as is), stripped."""
    if isinstance(completion, str):
        return completion.strip()
    for message in reversed(list(completion)):
        if message.get("role") == "assistant":
            return str(message.get("content") or "").strip()
    return ""


def tool_answer_reward(completions, answer, **kwargs) -> list[float]:
    """1.0 when a completion's final answer is the expected ``answer``, else 0.0."""
    return [float(final_answer(c) == str(a)) for c, a in zip(completions, answer)]


class GuessNumberEnv:
    """Guess a number from 1 to ``high`` (an episodic environment). ``reset(secret=...)`` (a dataset column, or
    random) returns the rules; ``step(text)`` reads the first integer of the model's turn and answers "higher",
    "lower" or ends the episode. The reward, on the final step, is 1 - 0.1 * (guesses - 1) for finding the number
    (so fewer guesses earn more), 0 when ``max_guesses`` run out; a turn without a number is a wasted guess."""

    def __init__(self, high: int = 8, max_guesses: int = 4, seed: int | None = None):
        self.high, self.max_guesses = high, max_guesses
        self.rng = random.Random(seed)
        self.secret, self.guesses, self.solved = None, 0, False

    def reset(self, secret: int | None = None, **row) -> str | None:
        self.secret = int(secret) if secret is not None else self.rng.randint(1, self.high)
        self.guesses, self.solved = 0, False
        return None  # the prompt states the rules

    def step(self, action: str):
        self.guesses += 1
        match = re.search(r"\d+", action)
        guess = int(match.group()) if match else None
        if guess == self.secret:
            self.solved = True
            return "correct", 1.0 - 0.1 * (self.guesses - 1), True
        if self.guesses >= self.max_guesses:
            return "out of guesses", 0.0, True
        if guess is None:
            return "say a number", 0.0, False
        return ("higher" if guess < self.secret else "lower"), 0.0, False


def openenv_guess_env(url: str | None = None):
    """The guessing game of the kit's OpenEnv server (``posttrain/kit/openenv_server.py``) at ``url`` (default
    ``$POSTTRAIN_OPENENV_URL``, else ``http://127.0.0.1:8765``), as an environment for ``environment_factory``."""
    import os

    from posttrain.rollout.openenv import OpenEnvEnvironment

    return OpenEnvEnvironment(url or os.environ.get("POSTTRAIN_OPENENV_URL", "http://127.0.0.1:8765"))


def guess_prompt_rows(n: int, high: int = 8, seed: int = 0) -> list[dict[str, Any]]:
    """Prompts of the guessing game with their ``secret`` column (read by :meth:`GuessNumberEnv.reset`)."""
    rng = random.Random(seed)
    return [{"prompt": [{"role": "user", "content": f"Guess my number from 1 to {high}."}],
             "secret": rng.randint(1, high)} for _ in range(n)]


def guess_demo_rows(n: int, high: int = 8, seed: int = 0, bisect_fraction: float = 0.5) -> list[dict[str, Any]]:
    """SFT demonstrations of the game: a ``bisect_fraction`` share played by bisection (the middle of the numbers
    still possible: found in at most log2(high) + 1 guesses), the rest by guessing numbers not yet tried at random,
    ignoring the feedback. A model trained on them plays both ways; RL can then prefer the one that wins in fewer
    turns."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        secret, low, top = rng.randint(1, high), 1, high
        bisect = rng.random() < bisect_fraction
        untried = list(range(1, high + 1))
        rng.shuffle(untried)
        messages = [{"role": "user", "content": f"Guess my number from 1 to {high}."}]
        while True:
            guess = (low + top) // 2 if bisect else untried.pop()
            messages.append({"role": "assistant", "content": str(guess)})
            if guess == secret:
                break
            if bisect:
                low, top = (guess + 1, top) if guess < secret else (low, guess - 1)
            else:
                untried = [u for u in untried if u != guess]
            messages.append({"role": "user", "content": "higher" if guess < secret else "lower"})
        rows.append({"messages": messages})
    return rows
