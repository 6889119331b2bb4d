"""Turning completions into scalar rewards: one interface for reward models and Python reward functions.

A *reward function* is one of

* a sequence-classification reward model (``num_labels=1``; a model object, or a name/path loaded with
  ``AutoModelForSequenceClassification``) with its tokenizer. Each ``(prompt, completion)`` is tokenized exactly as
  :class:`~posttrain.RewardTrainer` tokenizes its pairs (standard text: prompt tokens + completion tokens + EOS;
  conversational: the chat template), batched, right-padded, on the model's device, under ``torch.no_grad``;
* a Python callable ``fn(prompts=..., completions=..., **kwargs) -> list[float]`` (TRL's reward-function
  signature). ``kwargs`` are the extra dataset columns, one value per completion. An entry may be ``None``
  ("does not apply to this completion"): it becomes NaN in the per-function table and is skipped in the sum.
  A coroutine function (``async def``) is awaited; several async functions run concurrently.

:class:`RewardScorer` takes one or a list of them with optional weights and returns :class:`RewardScores`:
the per-function rewards ``(N, F)`` and the weighted sum ``(N,)``. A callable that raises, returns ``None``,
returns something that is not a list of numbers, or returns the wrong number of scores raises
:class:`RewardFunctionError` naming the function.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import numbers
import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from ..data.collators import pad_sequences
from ..data.formats import is_conversational_value
from ..data.tokenize import tokenize_prompt_completion
from ..models.wrappers import unwrap


class RewardFunctionError(ValueError):
    """A reward function failed or returned something unusable; the message names the function."""


@dataclass
class RewardScores:
    """Rewards of N completions under F reward functions."""

    per_function: torch.Tensor
    """``(N, F)`` float32; NaN where a function returned ``None`` for a completion."""
    rewards: torch.Tensor
    """``(N,)`` float32: ``sum_f weight_f * per_function[:, f]`` over the non-NaN entries (NaN if all are NaN)."""
    names: list[str]
    """The F function names (a callable's ``__name__``, a model's ``config._name_or_path``)."""

    def as_dict(self) -> dict[str, list[float]]:
        """``{name: rewards}`` per function (handy for logging as ``rewards/<name>``)."""
        return {name: self.per_function[:, i].tolist() for i, name in enumerate(self.names)}


def reward_func_name(func: Any) -> str:
    if isinstance(func, str):
        return func.rstrip("/").split("/")[-1]
    if isinstance(func, torch.nn.Module):
        name = getattr(getattr(unwrap(func), "config", None), "_name_or_path", "") or type(unwrap(func)).__name__
        return str(name).rstrip("/").split("/")[-1]
    return getattr(func, "__name__", None) or type(func).__name__


def completion_for_model(prompt: Any, completion: Any) -> Any:
    """A completion in the prompt's format: a plain string becomes an assistant message after a conversational prompt."""
    if is_conversational_value(prompt) and isinstance(completion, str):
        return [{"role": "assistant", "content": completion}]
    return completion


@torch.no_grad()
def score_with_model(model, tokenizer, prompts: Sequence, completions: Sequence, *, batch_size: int = 32,
                     max_length: int | None = None) -> torch.Tensor:
    """Scalar rewards ``(N,)`` (float32, on CPU) of a sequence-classification reward model.

    ``max_length`` keeps the *last* tokens of longer sequences (where the score is read); None keeps everything.
    """
    base = unwrap(model)
    if tokenizer is None:
        raise ValueError(f"Reward model {reward_func_name(model)!r} needs its tokenizer (reward_processing_classes).")
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config = getattr(base, "config", None)
    if config is not None and getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = pad
    seqs = []
    for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        conversational = is_conversational_value(prompt)
        p_ids, c_ids = tokenize_prompt_completion(tokenizer, prompt, completion_for_model(prompt, completion),
                                                  conversational, tokenizer.eos_token_id, row=i)
        ids = p_ids + c_ids
        seqs.append(ids[-max_length:] if max_length else ids)
    was_training = base.training
    base.eval()
    device = next(base.parameters()).device
    out = []
    try:
        for start in range(0, len(seqs), batch_size):
            chunk = seqs[start : start + batch_size]
            input_ids = pad_sequences(chunk, pad).to(device)
            attention_mask = pad_sequences([[1] * len(s) for s in chunk], 0).to(device)
            with torch.no_grad():
                logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
            out.append(logits[:, 0].float().cpu())
    finally:
        base.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def _run_coroutines(coros: list) -> list:
    async def gather():
        return await asyncio.gather(*coros, return_exceptions=True)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(gather())
    # Already inside an event loop (e.g. a notebook): run ours in a helper thread.
    result: list = []
    thread = threading.Thread(target=lambda: result.extend(asyncio.run(gather())))
    thread.start()
    thread.join()
    return result


class RewardScorer:
    """Score completions with one or several reward functions (see the module docstring).

    Args:
        reward_funcs: a reward model, a model name/path, a callable, or a list of these.
        reward_processing_classes: the tokenizer of each reward model (a list aligned with ``reward_funcs``, entries
            for callables ignored; a single tokenizer when there is one function). A model given by name/path loads
            its own tokenizer when none is given.
        reward_weights: one weight per function (default: all 1.0).
        batch_size: reward-model batch size.
        max_length: reward-model inputs keep their last ``max_length`` tokens.
        model_context: a function returning the context that reward *models* score in (a trainer passes its
            ``autocast_region``, so that they score in the training precision, as TRL 1.x's GRPO does); default none.
    """

    def __init__(self, reward_funcs, reward_processing_classes=None, reward_weights: Sequence[float] | None = None,
                 batch_size: int = 32, max_length: int | None = None,
                 model_context: Callable[[], AbstractContextManager] | None = None):
        funcs = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
        if not funcs:
            raise ValueError("reward_funcs is empty: give at least one reward model or reward function.")
        if reward_processing_classes is not None and not isinstance(reward_processing_classes, (list, tuple)):
            reward_processing_classes = [reward_processing_classes]  # one class: for the one reward function
        if reward_processing_classes is None:
            reward_processing_classes = [None] * len(funcs)
        if len(reward_processing_classes) != len(funcs):
            raise ValueError(f"{len(reward_processing_classes)} reward_processing_classes for {len(funcs)} reward "
                             "functions: their numbers must match; give a list with one per function (None for "
                             "callables, and for a reward model whose own tokenizer should be loaded).")
        self.reward_funcs: list[Any] = []
        self.processing_classes: list[Any] = []
        for func, tok in zip(funcs, reward_processing_classes):
            if isinstance(func, str):
                func, tok = _load_reward_model(func, tok)
            elif not isinstance(func, torch.nn.Module) and not callable(func):
                raise TypeError(f"Reward function {func!r} is neither a model, a model name/path nor a callable.")
            self.reward_funcs.append(func)
            self.processing_classes.append(tok)
        if reward_weights is None:
            reward_weights = [1.0] * len(funcs)
        if len(reward_weights) != len(funcs):
            raise ValueError(f"{len(reward_weights)} reward_weights for {len(funcs)} reward functions; give one per function.")
        self.reward_weights = torch.tensor([float(w) for w in reward_weights], dtype=torch.float32)
        self.names = [reward_func_name(f) for f in self.reward_funcs]
        self.batch_size = batch_size
        self.max_length = max_length
        self.model_context = model_context or nullcontext

    def __call__(self, prompts: Sequence, completions: Sequence, **kwargs) -> RewardScores:
        """Score N completions (``prompts[i]`` is the prompt of ``completions[i]``); ``kwargs`` are per-completion columns."""
        n = len(completions)
        if len(prompts) != n:
            raise ValueError(f"{len(prompts)} prompts for {n} completions; give one prompt per completion.")
        for key, values in kwargs.items():
            if isinstance(values, Sequence) and not isinstance(values, str) and len(values) != n:
                raise ValueError(f"Column {key!r} has {len(values)} values for {n} completions.")
        columns: list[torch.Tensor | None] = [None] * len(self.reward_funcs)
        pending: list[tuple[int, Any]] = []
        for f, (func, tok) in enumerate(zip(self.reward_funcs, self.processing_classes)):
            if isinstance(func, torch.nn.Module):
                with self.model_context():
                    columns[f] = score_with_model(func, tok, prompts, completions, batch_size=self.batch_size,
                                                  max_length=self.max_length)
                continue
            result = self._call(func, f, prompts, completions, kwargs)
            if inspect.isawaitable(result):
                pending.append((f, result))
            else:
                columns[f] = self._check(f, result, n)
        if pending:
            results = _run_coroutines([coro for _, coro in pending])
            for (f, _), result in zip(pending, results):
                if isinstance(result, BaseException):
                    raise RewardFunctionError(
                        f"Reward function {self.names[f]!r} raised {type(result).__name__}: {result}") from result
                columns[f] = self._check(f, result, n)
        per_function = torch.stack(columns, dim=1) if n else torch.zeros(0, len(self.reward_funcs))
        weighted = per_function * self.reward_weights
        rewards = torch.nansum(weighted, dim=1)
        rewards[torch.isnan(per_function).all(dim=1)] = float("nan")
        return RewardScores(per_function=per_function, rewards=rewards, names=list(self.names))

    def _call(self, func: Callable, f: int, prompts, completions, kwargs: Mapping[str, Any]):
        try:
            return func(prompts=list(prompts), completions=list(completions), **kwargs)
        except Exception as err:
            raise RewardFunctionError(
                f"Reward function {self.names[f]!r} raised {type(err).__name__}: {err}. It is called as "
                "fn(prompts=[...], completions=[...], **columns); accept extra columns with **kwargs.") from err

    def _check(self, f: int, result: Any, n: int) -> torch.Tensor:
        name = self.names[f]
        if result is None:
            raise RewardFunctionError(f"Reward function {name!r} returned None; it must return a list of {n} floats "
                                      "(one per completion; an entry may be None when the function does not apply).")
        if torch.is_tensor(result):
            result = result.detach().float().reshape(-1).cpu().tolist()
        try:
            values = list(result)
        except TypeError:
            raise RewardFunctionError(f"Reward function {name!r} returned {type(result).__name__}, not a list of "
                                      f"{n} floats.") from None
        if len(values) != n:
            raise RewardFunctionError(f"Reward function {name!r} returned {len(values)} scores for {n} completions; "
                                      "it must return exactly one score per completion.")
        out = []
        for i, v in enumerate(values):
            if v is None:
                out.append(math.nan)
            elif torch.is_tensor(v) and v.numel() == 1:
                out.append(float(v.item()))
            elif isinstance(v, numbers.Real):  # int, float, bool, numpy scalars
                out.append(float(v))
            else:
                raise RewardFunctionError(f"Reward function {name!r} returned {v!r} (a {type(v).__name__}) for "
                                          f"completion {i}; expected a number or None.")
        return torch.tensor(out, dtype=torch.float32)


def _load_reward_model(name_or_path: str, tokenizer):
    from transformers import AutoModelForSequenceClassification

    from ..models.loading import load_pretrained, load_tokenizer

    model = load_pretrained(name_or_path, AutoModelForSequenceClassification, num_labels=1, frozen=True)
    model.eval()
    return model, tokenizer if tokenizer is not None else load_tokenizer(name_or_path)


def score(reward_funcs, prompts: Sequence, completions: Sequence, reward_processing_classes=None,
          reward_weights: Sequence[float] | None = None, batch_size: int = 32, **kwargs) -> RewardScores:
    """One-shot :class:`RewardScorer` call: ``score([rm, fn], prompts, completions, reward_processing_classes=[tok, None])``."""
    scorer = RewardScorer(reward_funcs, reward_processing_classes, reward_weights, batch_size=batch_size)
    return scorer(prompts, completions, **kwargs)


__all__ = ["RewardFunctionError", "RewardScorer", "RewardScores", "completion_for_model", "reward_func_name", "score",
           "score_with_model"]
