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
* :class:`LLMPairwiseJudge` / :class:`LLMRankJudge` / :class:`LLMBinaryJudge` — a local causal LM is asked the
  question and its **next-token probabilities** of the answer digits (``"0"``, ``"1"``, ...) are read in one
  batched forward pass (no generation). An answer is invalid when the digits together get less than
  ``min_choice_prob`` of the probability mass (the model wants to say something else); invalid answers follow
  ``on_error`` as above.
"""

from __future__ import annotations

import json
import logging
import os
import random
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
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


# -- local causal LM judges -----------------------------------------------------------------------------
DEFAULT_BINARY_SYSTEM_PROMPT = (
    "You check answers. You are given an instruction and a candidate answer{gold_hint}. Decide whether the answer "
    "is correct and follows the instruction.\n\n## Instruction\n{prompt}\n\n## Answer\n{response}\n\n{gold}"
    "Reply with exactly one character: 1 if the answer is acceptable, 0 if it is not. Write nothing else."
)
DEFAULT_RANK_SYSTEM_PROMPT = (
    "You judge the quality of answers. You are given an instruction and {n} candidate answers, numbered 0 to {last}. "
    "The order in which the answers appear says nothing about their quality.\n\n## Instruction\n{prompt}\n\n"
    "{responses}\n\nReply with exactly one character: the number of the best answer. Write nothing else."
)


class _LocalLMJudge:
    """Shared plumbing of the local-LM judges: build the judge texts, run the LM in batches, read the next-token
    probabilities of the choice tokens ("0", "1", ...).

    Args:
        model: a causal LM (``transformers`` model, possibly PEFT-wrapped); it is used in eval mode under
            ``torch.no_grad`` (its training mode is restored afterwards).
        tokenizer: its tokenizer. Each choice (``"0"``, ``"1"``, ...) must be a single token.
        system_prompt: the judge instruction, a ``str.format`` template (placeholders per judge class).
        use_chat_template: wrap the text as one user message with the tokenizer's chat template and the assistant
            turn opened (default: when the tokenizer has a chat template); else the raw text is the model input.
        batch_size: texts per forward pass. max_length: keep the *last* max_length tokens of a longer text.
        min_choice_prob: an answer is invalid when the choice tokens together get less probability than this.
        on_error: ``"raise"`` (invalid answers raise :class:`JudgeError`) or ``"tie"`` (warning, judged -1).
        seed: seed of the order shuffling.
    """

    _placeholders: tuple[str, ...] = ()
    _default_prompt = ""

    def __init__(self, model, tokenizer, system_prompt: str | None = None, *, use_chat_template: bool | None = None,
                 batch_size: int = 8, max_length: int | None = None, min_choice_prob: float = 0.0,
                 on_error: str = "raise", seed: int | None = None):
        if on_error not in ("raise", "tie"):
            raise ValueError(f"on_error must be 'raise' or 'tie', got {on_error!r}.")
        if not 0.0 <= min_choice_prob <= 1.0:
            raise ValueError(f"min_choice_prob must be in [0, 1], got {min_choice_prob}.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.model = model
        self.tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
        self.system_prompt = system_prompt or self._default_prompt
        missing = [name for name in self._placeholders if "{" + name + "}" not in self.system_prompt]
        if missing:
            raise ValueError(f"{type(self).__name__}: the system_prompt template lacks the placeholder(s) "
                             f"{', '.join('{' + m + '}' for m in missing)}.")
        if use_chat_template is None:
            use_chat_template = bool(getattr(self.tokenizer, "chat_template", None))
        self.use_chat_template = use_chat_template
        self.batch_size, self.max_length = batch_size, max_length
        self.min_choice_prob, self.on_error = min_choice_prob, on_error
        self._rng = random.Random(seed)

    def choice_ids(self, n: int) -> list[int]:
        """Token ids of the answers ``"0"`` ... ``str(n-1)``; each must be exactly one token."""
        ids = []
        for k in range(n):
            tokens = self.tokenizer(str(k), add_special_tokens=False)["input_ids"]
            if len(tokens) != 1:
                raise ValueError(f"{type(self).__name__}: the answer {str(k)!r} is {len(tokens)} tokens for this "
                                 "tokenizer; the judge reads the probability of a single next token.")
            ids.append(tokens[0])
        return ids

    def _encode(self, text: str) -> list[int]:
        if self.use_chat_template:
            ids = self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=True,
                                                     add_generation_prompt=True)
            ids = list(ids["input_ids"] if isinstance(ids, Mapping) else ids)
        else:
            ids = list(self.tokenizer(text)["input_ids"])
        return ids[-self.max_length:] if self.max_length else ids

    def choice_probs(self, texts: Sequence[str], n_choices: int) -> torch.Tensor:
        """``(len(texts), n_choices)`` float32 next-token probabilities (over the whole vocabulary) of the choices."""
        import torch

        from ..data.collators import pad_sequences
        from ..models.wrappers import unwrap

        choice = torch.tensor(self.choice_ids(n_choices))
        seqs = [self._encode(t) for t in texts]
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        base = unwrap(self.model)
        was_training = base.training
        base.eval()
        device = next(base.parameters()).device
        out = []
        try:
            with torch.no_grad():
                for start in range(0, len(seqs), self.batch_size):
                    chunk = seqs[start : start + self.batch_size]
                    lengths = torch.tensor([len(s) for s in chunk])
                    if (lengths == 0).any():
                        raise ValueError("A judge text encoded to zero tokens.")
                    input_ids = pad_sequences(chunk, pad).to(device)  # right padding: no position shift
                    attention_mask = pad_sequences([[1] * len(s) for s in chunk], 0).to(device)
                    logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
                    last = logits[torch.arange(len(chunk), device=logits.device), (lengths - 1).to(logits.device)]
                    probs = last.float().softmax(-1)[:, choice.to(logits.device)]
                    out.append(probs.cpu())
        finally:
            base.train(was_training)
        return torch.cat(out) if out else torch.zeros(0, n_choices)

    def _invalid(self, what: str, mass: float) -> None:
        message = (f"{type(self).__name__}: {what}: the answer tokens got probability {mass:.3g} < "
                   f"min_choice_prob={self.min_choice_prob}; the model did not answer with a choice.")
        if self.on_error == "raise":
            raise JudgeError(message)
        logger.warning("%s Judged -1.", message)

    def _valid(self, what: str, probs) -> bool:
        mass = float(probs.sum())
        if mass < self.min_choice_prob or mass <= 0.0:
            self._invalid(what, mass)
            return False
        return True


class LLMPairwiseJudge(_LocalLMJudge, BasePairwiseJudge):
    """Pairwise judge backed by a local causal LM: it is asked which answer is better (the same template as
    :class:`OpenAIPairwiseJudge`, placeholders ``{prompt}``, ``{response0}``, ``{response1}``) and the answer is the
    more probable next token of ``"0"`` and ``"1"``; equal probabilities give -1. See :class:`_LocalLMJudge` for the
    arguments. ``judge(..., return_scores=True)`` returns, per pair, the probability that the **first** completion
    is better, ``p("0") / (p("0") + p("1"))`` mapped back through the shuffling (NaN when invalid)."""

    _placeholders = ("prompt", "response0", "response1")
    _default_prompt = DEFAULT_PAIRWISE_SYSTEM_PROMPT

    def judge(self, prompts, completions, shuffle_order: bool = True, return_scores: bool = False) -> list:
        _check_pairs(prompts, completions)
        flips = [shuffle_order and self._rng.random() < 0.5 for _ in prompts]
        texts = []
        for prompt, pair, flip in zip(prompts, completions, flips):
            a, b = (pair[1], pair[0]) if flip else (pair[0], pair[1])
            texts.append(self.system_prompt.format(prompt=_as_text(prompt), response0=_as_text(a),
                                                   response1=_as_text(b)))
        probs = self.choice_probs(texts, 2)
        results: list = []
        for i, (p, flip) in enumerate(zip(probs, flips)):
            if not self._valid(f"pair {i}", p):
                results.append(float("nan") if return_scores else -1)
                continue
            p_first_shown = float(p[0] / p.sum())
            if return_scores:
                results.append(1.0 - p_first_shown if flip else p_first_shown)
            else:
                choice = 0 if p[0] > p[1] else 1 if p[1] > p[0] else -1
                results.append(1 - choice if flip and choice != -1 else choice)
        return results


class LLMRankJudge(_LocalLMJudge, BaseRankJudge):
    """Rank judge backed by a local causal LM: the completions of a prompt (at most 10) are shown numbered
    ``0..n-1`` (template placeholders ``{prompt}``, ``{responses}``, ``{n}``, ``{last}``), and they are ranked by the
    next-token probability of their number, most probable first (ties keep the shown order). An invalid answer
    gives an empty ranking ``[]`` with ``on_error="tie"``."""

    _placeholders = ("prompt", "responses")
    _default_prompt = DEFAULT_RANK_SYSTEM_PROMPT

    def judge(self, prompts, completions, shuffle_order: bool = True) -> list[list[int]]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} lists of completions.")
        for i, group in enumerate(completions):
            if not 1 <= len(group) <= 10:
                raise ValueError(f"Prompt {i}: LLMRankJudge ranks 1 to 10 completions (one digit each), got {len(group)}.")
        by_size: dict[int, list[int]] = {}
        for i, group in enumerate(completions):
            by_size.setdefault(len(group), []).append(i)
        results: list[list[int]] = [[] for _ in prompts]
        for n, rows in by_size.items():
            orders, texts = [], []
            for i in rows:
                order = list(range(n))
                if shuffle_order:
                    self._rng.shuffle(order)
                orders.append(order)
                shown = "\n\n".join(f"## Answer {k}\n{_as_text(completions[i][j])}" for k, j in enumerate(order))
                texts.append(self.system_prompt.format(prompt=_as_text(prompts[i]), responses=shown, n=n, last=n - 1))
            probs = self.choice_probs(texts, n)
            for i, order, p in zip(rows, orders, probs):
                if self._valid(f"prompt {i}", p):
                    ranked_shown = sorted(range(n), key=lambda k: -float(p[k]))
                    results[i] = [order[k] for k in ranked_shown]
        return results


class LLMBinaryJudge(_LocalLMJudge, BaseBinaryJudge):
    """Binary judge backed by a local causal LM: it is asked whether the answer is acceptable (placeholders
    ``{prompt}``, ``{response}``, and ``{gold}``/``{gold_hint}`` filled when ``gold_completions`` are given) and says
    1 when ``p("1") > p("0")``, 0 when lower, -1 when equal or invalid. ``shuffle_order`` has no effect (one
    completion per prompt). ``judge(..., return_scores=True)`` returns ``p("1") / (p("0") + p("1"))``."""

    _placeholders = ("prompt", "response")
    _default_prompt = DEFAULT_BINARY_SYSTEM_PROMPT

    def judge(self, prompts, completions, gold_completions=None, shuffle_order: bool = True,
              return_scores: bool = False) -> list:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions; give one per prompt.")
        if gold_completions is not None and len(gold_completions) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(gold_completions)} gold completions.")
        texts = []
        for i, (prompt, completion) in enumerate(zip(prompts, completions)):
            gold = gold_completions[i] if gold_completions is not None else None
            texts.append(self.system_prompt.format(
                prompt=_as_text(prompt), response=_as_text(completion),
                gold_hint="" if gold is None else " and a reference answer",
                gold="" if gold is None else f"## Reference answer\n{_as_text(gold)}\n\n"))
        probs = self.choice_probs(texts, 2)
        results: list = []
        for i, p in enumerate(probs):
            if not self._valid(f"completion {i}", p):
                results.append(float("nan") if return_scores else -1)
            elif return_scores:
                results.append(float(p[1] / p.sum()))
            else:
                results.append(1 if p[1] > p[0] else 0 if p[0] > p[1] else -1)
        return results


__all__ = ["AllTrueJudge", "BaseBinaryJudge", "BaseJudge", "BasePairwiseJudge", "BaseRankJudge",
           "DEFAULT_BINARY_SYSTEM_PROMPT", "DEFAULT_PAIRWISE_SYSTEM_PROMPT", "DEFAULT_RANK_SYSTEM_PROMPT",
           "JudgeError", "LLMBinaryJudge", "LLMPairwiseJudge", "LLMRankJudge", "OpenAIPairwiseJudge", "RewardModelPairwiseJudge",
           "RewardModelRankJudge"]
