"""Judges: compare, rank or accept completions (TRL-compatible interfaces).

Three small interfaces, each with one method ``judge``:

* :class:`BasePairwiseJudge` — ``judge(prompts, completions, shuffle_order=True) -> list[int]``: for each prompt a
  pair ``[a, b]``; returns the index (0 or 1) of the better completion, or ``-1`` for a tie or a failure.
* :class:`BaseRankJudge` — ``judge(prompts, completions, shuffle_order=True) -> list[list[int]]``: for each prompt a
  list of completions; returns their indices from best to worst.
* :class:`BaseBinaryJudge` — ``judge(prompts, completions, gold_completions=None, shuffle_order=True) -> list[int]``:
  for each prompt one completion; returns ``1`` (acceptable), ``0`` (not) or ``-1`` (the judge failed).

Implementations:

* :class:`RewardModelPairwiseJudge` / :class:`RewardModelRankJudge` — a local reward model decides (through
  :func:`~posttrain.rollout.scoring.score_with_model`); equal scores are a tie (-1).
* :class:`AllTrueJudge` — a binary judge that accepts a completion only when every inner binary judge accepts it.
* :class:`OpenAIPairwiseJudge` — asks an OpenAI-compatible chat-completions endpoint (``POST {base_url}/chat/completions``;
  OpenAI, vLLM, llama.cpp, TGI, ...) which answer is better, with the standard library only (``urllib``).
  It expects the reply ``"0"`` or ``"1"``. A malformed reply or a failed request raises :class:`JudgeError` by
  default (``on_error="raise"``); with ``on_error="tie"`` it is logged as a warning and judged ``-1``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

logger = logging.getLogger("posttrain")


class JudgeError(RuntimeError):
    """A judge could not produce a verdict (a failed request or a reply it cannot parse)."""


class BaseJudge(ABC):
    """Base of every judge."""

    @abstractmethod
    def judge(self, prompts: list[str], completions: list, shuffle_order: bool = True) -> list:
        ...


class BasePairwiseJudge(BaseJudge):
    """Pick the better of two completions per prompt: 0, 1, or -1 (tie / failure)."""

    @abstractmethod
    def judge(self, prompts: list[str], completions: list[list[str]], shuffle_order: bool = True) -> list[int]:
        ...


class BaseRankJudge(BaseJudge):
    """Rank the completions of each prompt: indices from best to worst."""

    @abstractmethod
    def judge(self, prompts: list[str], completions: list[list[str]], shuffle_order: bool = True) -> list[list[int]]:
        ...


class BaseBinaryJudge(BaseJudge):
    """Accept (1) or reject (0) one completion per prompt; -1 when the judge fails."""

    @abstractmethod
    def judge(self, prompts: list[str], completions: list[str], gold_completions: list[str] | None = None,
              shuffle_order: bool = True) -> list[int]:
        ...


def _check_pairs(prompts: Sequence, completions: Sequence) -> None:
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completion pairs; give one pair per prompt.")
    for i, pair in enumerate(completions):
        if len(pair) != 2:
            raise ValueError(f"Prompt {i}: a pairwise judge compares exactly 2 completions, got {len(pair)}.")


# -- local reward model --------------------------------------------------------------------------------
class RewardModelPairwiseJudge(BasePairwiseJudge):
    """The completion with the higher reward-model score wins; equal scores give -1.

    A reward model scores every completion on its own, so the order of a pair cannot bias it and
    ``shuffle_order`` has no effect.
    """

    def __init__(self, model, tokenizer, batch_size: int = 32, max_length: int | None = None):
        self.model, self.tokenizer, self.batch_size, self.max_length = model, tokenizer, batch_size, max_length

    def scores(self, prompts: Sequence, completions: Sequence) -> list[float]:
        from .scoring import score_with_model

        return score_with_model(self.model, self.tokenizer, prompts, completions, batch_size=self.batch_size,
                                max_length=self.max_length).tolist()

    def judge(self, prompts, completions, shuffle_order: bool = True) -> list[int]:
        _check_pairs(prompts, completions)
        flat_prompts = [p for p in prompts for _ in range(2)]
        flat = [c for pair in completions for c in pair]
        s = self.scores(flat_prompts, flat)
        return [0 if a > b else 1 if b > a else -1 for a, b in zip(s[0::2], s[1::2])]


class RewardModelRankJudge(RewardModelPairwiseJudge, BaseRankJudge):
    """Rank completions by reward-model score (ties keep their original order)."""

    def judge(self, prompts, completions, shuffle_order: bool = True) -> list[list[int]]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} lists of completions.")
        flat_prompts = [p for p, group in zip(prompts, completions) for _ in group]
        s = self.scores(flat_prompts, [c for group in completions for c in group])
        out, start = [], 0
        for group in completions:
            group_scores = s[start : start + len(group)]
            out.append(sorted(range(len(group)), key=lambda j: -group_scores[j]))
            start += len(group)
        return out


# -- combinators ----------------------------------------------------------------------------------------
class AllTrueJudge(BaseBinaryJudge):
    """1 when every inner binary judge says 1, 0 when one says 0 (and none failed), -1 when any judge failed."""

    def __init__(self, judges: Sequence[BaseBinaryJudge]):
        if not judges:
            raise ValueError("AllTrueJudge needs at least one binary judge.")
        self.judges = list(judges)

    def judge(self, prompts, completions, gold_completions=None, shuffle_order: bool = True) -> list[int]:
        verdicts = [j.judge(prompts, completions, gold_completions, shuffle_order) for j in self.judges]
        for j, v in zip(self.judges, verdicts):
            if len(v) != len(prompts):
                raise JudgeError(f"{type(j).__name__} returned {len(v)} verdicts for {len(prompts)} prompts.")
        out = []
        for row in zip(*verdicts):
            if any(v not in (0, 1) for v in row):
                out.append(-1)
            else:
                out.append(int(all(v == 1 for v in row)))
        return out


# -- OpenAI-compatible HTTP judge ------------------------------------------------------------------------
DEFAULT_PAIRWISE_SYSTEM_PROMPT = (
    "You judge the quality of answers. You are given an instruction and two candidate answers, numbered 0 and 1. "
    "Decide which answer follows the instruction better: more correct, more helpful, clearer. The order in which "
    "the answers appear says nothing about their quality.\n\n"
    "## Instruction\n{prompt}\n\n## Answer 0\n{response0}\n\n## Answer 1\n{response1}\n\n"
    "Reply with exactly one character: 0 if answer 0 is better, 1 if answer 1 is better. Write nothing else."
)


def _as_text(value: Any) -> str:
    """Render a prompt or completion (string or list of messages) as plain text for a judge prompt."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return str(value.get("content", ""))
    return "\n".join(f"{m.get('role', '')}: {m.get('content', '')}" for m in value)


class OpenAIPairwiseJudge(BasePairwiseJudge):
    """Pairwise judge backed by an OpenAI-compatible chat-completions endpoint (standard library HTTP only).

    Args:
        model: model name sent in the request.
        system_prompt: the judge instruction, a template with ``{prompt}``, ``{response0}`` and ``{response1}``;
            it is sent as the user message. Default: :data:`DEFAULT_PAIRWISE_SYSTEM_PROMPT`.
        base_url: endpoint root, e.g. ``http://localhost:8000/v1`` for a local vLLM server (default: the
            ``OPENAI_BASE_URL`` environment variable, else ``https://api.openai.com/v1``).
        api_key: bearer token (default: ``OPENAI_API_KEY``; none is sent when empty).
        max_requests: stop sending requests after this many (cost guard); later pairs are judged -1 with a warning.
            None: no limit.
        on_error: ``"raise"`` (default): a failed request or a reply other than ``"0"``/``"1"`` raises
            :class:`JudgeError`; ``"tie"``: it is logged as a warning and judged -1.
        timeout: seconds per request. max_workers: concurrent requests. seed: seed of the order shuffling.

    With ``shuffle_order=True`` each pair is shown in a random order (undone in the result), so a judge's
    position bias does not favour the first completion.
    """

    def __init__(self, model: str = "gpt-4o-mini", system_prompt: str | None = None, base_url: str | None = None,
                 api_key: str | None = None, max_requests: int | None = 1000, on_error: str = "raise",
                 timeout: float = 60.0, max_workers: int = 8, seed: int | None = None):
        if on_error not in ("raise", "tie"):
            raise ValueError(f"on_error must be 'raise' or 'tie', got {on_error!r}.")
        self.model = model
        self.system_prompt = system_prompt or DEFAULT_PAIRWISE_SYSTEM_PROMPT
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")
        self.max_requests = max_requests
        self.on_error = on_error
        self.timeout = timeout
        self.max_workers = max_workers
        self.num_requests = 0
        self._rng = random.Random(seed)

    # one request
    def _post(self, content: str) -> str:
        body = json.dumps({
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": 1,
            "temperature": 0,
        }).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(f"{self.base_url}/chat/completions", data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                payload = json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as err:
            detail = err.read().decode("utf-8", "replace")[:300]
            raise JudgeError(f"{self.base_url}/chat/completions answered HTTP {err.code}: {detail}") from err
        except (urllib.error.URLError, TimeoutError, OSError) as err:
            raise JudgeError(f"Request to {self.base_url}/chat/completions failed: {err}") from err
        except json.JSONDecodeError as err:
            raise JudgeError(f"{self.base_url}/chat/completions did not answer JSON: {err}") from err
        try:
            return payload["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise JudgeError(f"Unexpected response shape (no choices[0].message.content): {str(payload)[:300]}") from None

    @staticmethod
    def parse(answer: Any) -> int:
        """``"0"`` -> 0, ``"1"`` -> 1 (surrounding whitespace ignored); anything else raises :class:`JudgeError`."""
        text = answer.strip() if isinstance(answer, str) else answer
        if text in ("0", "1"):
            return int(text)
        raise JudgeError(f"The judge answered {answer!r}; expected exactly '0' or '1'.")

    def _judge_one(self, prompt: Any, pair: Sequence[Any], flip: bool) -> int:
        a, b = (pair[1], pair[0]) if flip else (pair[0], pair[1])
        content = self.system_prompt.format(prompt=_as_text(prompt), response0=_as_text(a), response1=_as_text(b))
        try:
            choice = self.parse(self._post(content))
        except JudgeError as err:
            if self.on_error == "raise":
                raise
            logger.warning("OpenAIPairwiseJudge: %s Judging this pair as a tie (-1).", err)
            return -1
        return 1 - choice if flip else choice

    def judge(self, prompts, completions, shuffle_order: bool = True) -> list[int]:
        _check_pairs(prompts, completions)
        flips = [shuffle_order and self._rng.random() < 0.5 for _ in prompts]
        allowed = len(prompts)
        if self.max_requests is not None:
            allowed = max(0, min(allowed, self.max_requests - self.num_requests))
            if allowed < len(prompts):
                logger.warning("OpenAIPairwiseJudge: max_requests=%d reached; %d pairs judged -1 without a request.",
                               self.max_requests, len(prompts) - allowed)
        self.num_requests += allowed
        with ThreadPoolExecutor(max_workers=max(1, self.max_workers)) as pool:
            results = list(pool.map(self._judge_one, prompts[:allowed], completions[:allowed], flips[:allowed]))
        return results + [-1] * (len(prompts) - allowed)


__all__ = ["AllTrueJudge", "BaseBinaryJudge", "BaseJudge", "BasePairwiseJudge", "BaseRankJudge",
           "DEFAULT_PAIRWISE_SYSTEM_PROMPT", "JudgeError", "OpenAIPairwiseJudge", "RewardModelPairwiseJudge",
           "RewardModelRankJudge"]
