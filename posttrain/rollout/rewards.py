"""Built-in reward functions for online trainers (GRPO and later RLOO/PPO).

Every function has the reward-function signature of :mod:`posttrain.rollout.scoring`::

    fn(prompts, completions, **kwargs) -> list[float | None]

``completions`` are strings (standard prompts) or one-message lists ``[{"role": "assistant", "content": ...}]``
(conversational prompts); dataset columns arrive as keyword arguments, one value per completion, and the
trainer also passes ``completion_ids`` (the generated token ids, EOS included when generation stopped there).

=======================  ==========================================================================================
name (``--reward_funcs``) reward
=======================  ==========================================================================================
``accuracy``             1.0 when the completion's answer equals the ``answer`` column exactly, else 0.0
``format``               1.0 for ``<think>...</think><answer>...</answer>``, else 0.0
``think_format``         1.0 for ``<think>...</think>`` followed by anything, else 0.0
``length``               ``-len(completion_ids) / max_completion_len`` (in ``[-1, 0]``)
``soft_overlong``        DAPO's soft overlong punishment (``max_completion_len``, ``soft_punish_cache``)
=======================  ==========================================================================================

``length`` and ``soft_overlong`` depend on a length budget, so they are made by factories
(:func:`get_length_penalty`, :func:`get_soft_overlong_punishment`); :func:`get_reward_func` builds any of them
from its name, or imports a ``module:function`` path.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

from ..data.formats import is_conversational_value

logger = logging.getLogger("posttrain")

__all__ = [
    "BUILTIN_REWARDS",
    "accuracy_reward",
    "extract_answer",
    "format_reward",
    "get_length_penalty",
    "get_reward_func",
    "get_soft_overlong_punishment",
    "think_format_reward",
]

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_ANSWER_LINE = re.compile(r"^\s*Answer:\s*(.*?)\s*$")
_FORMAT = re.compile(r"^\s*<think>(?:(?!<think>).)*?</think>\s*<answer>(?:(?!<answer>).)*?</answer>\s*$", re.DOTALL)
_THINK_FORMAT = re.compile(r"^\s*<think>(?:(?!<think>).)*?</think>.*$", re.DOTALL)


def _text(completion: Any) -> str:
    """The text of a completion: a string, or the content of the last message of a message list."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    if is_conversational_value(completion) or isinstance(completion, (list, tuple)):
        return str(completion[-1].get("content", "")) if completion else ""
    return str(completion)


def extract_answer(text: str) -> str:
    """The final answer in a completion: the content of the last ``<answer>...</answer>`` tag if there is one,
    else what follows ``Answer:`` on the last non-empty line if it starts so, else the whole text; stripped."""
    tags = _ANSWER_TAG.findall(text)
    if tags:
        return tags[-1].strip()
    lines = [line for line in text.splitlines() if line.strip()]
    if lines:
        match = _ANSWER_LINE.match(lines[-1])
        if match:
            return match.group(1).strip()
    return text.strip()


def accuracy_reward(prompts: Sequence, completions: Sequence, answer: Sequence | None = None, **kwargs) -> list[float | None]:
    """Exact-answer accuracy: 1.0 when :func:`extract_answer` of the completion equals the ``answer`` column
    (both stripped), else 0.0; None (does not apply) for rows whose answer is None.

    This is the check of the kit tasks (``posttrain.kit`` datasets carry an ``answer`` column).
    """
    if answer is None:
        raise ValueError("accuracy_reward needs an 'answer' column in the dataset (the correct answer of each "
                         "prompt); the kit datasets (posttrain.kit.make_dataset) have one.")
    out: list[float | None] = []
    for completion, ans in zip(completions, answer, strict=True):
        if ans is None:
            out.append(None)
        else:
            out.append(1.0 if extract_answer(_text(completion)) == str(ans).strip() else 0.0)
    return out


def format_reward(prompts: Sequence, completions: Sequence, **kwargs) -> list[float]:
    """1.0 when the completion is ``<think>...</think>`` then ``<answer>...</answer>`` (whitespace around and
    between allowed, no nested opening tags), else 0.0 (the format of DeepSeek-R1's rule-based reward)."""
    return [1.0 if _FORMAT.match(_text(c)) else 0.0 for c in completions]


def think_format_reward(prompts: Sequence, completions: Sequence, **kwargs) -> list[float]:
    """1.0 when the completion starts with one ``<think>...</think>`` block (anything may follow), else 0.0."""
    return [1.0 if _THINK_FORMAT.match(_text(c)) else 0.0 for c in completions]


def _lengths(name: str, completion_ids: Sequence | None, n: int) -> list[int]:
    if completion_ids is None:
        raise ValueError(f"{name} needs the completion token ids (the completion_ids keyword argument, which "
                         "GRPOTrainer passes to every reward function).")
    lengths = [len(ids) for ids in completion_ids]
    if len(lengths) != n:
        raise ValueError(f"{name}: {len(lengths)} completion_ids for {n} completions.")
    return lengths


def get_length_penalty(max_completion_len: int, coef: float = 1.0) -> Callable[..., list[float]]:
    """A reward ``-coef * len(completion_ids) / max_completion_len`` (``[-coef, 0]`` for completions within the
    budget): shorter completions score higher. Lengths count generated tokens, EOS included."""
    if max_completion_len is None or max_completion_len < 1:
        raise ValueError(f"max_completion_len must be a positive number of tokens, got {max_completion_len}.")

    def length_penalty(prompts: Sequence, completions: Sequence, completion_ids: Sequence | None = None,
                       **kwargs) -> list[float]:
        lengths = _lengths("length_penalty", completion_ids, len(completions))
        return [-coef * n / max_completion_len for n in lengths]

    return length_penalty


def get_soft_overlong_punishment(max_completion_len: int, soft_punish_cache: int) -> Callable[..., list[float]]:
    """DAPO's soft overlong punishment (Yu et al. 2025, 'DAPO', Eq. 13). With ``L`` the completion length in
    tokens (EOS included), ``L_max = max_completion_len`` and ``L_cache = soft_punish_cache``::

        0                                   if L <= L_max - L_cache
        ((L_max - L_cache) - L) / L_cache   if L_max - L_cache < L <= L_max   (from 0 down to -1)
        -1                                  if L > L_max
    """
    if max_completion_len is None or max_completion_len < 1:
        raise ValueError(f"max_completion_len must be a positive number of tokens, got {max_completion_len}.")
    if not 0 <= soft_punish_cache <= max_completion_len:
        raise ValueError(f"soft_punish_cache must be in [0, max_completion_len={max_completion_len}], "
                         f"got {soft_punish_cache}.")
    free = max_completion_len - soft_punish_cache

    def soft_overlong_punishment(prompts: Sequence, completions: Sequence, completion_ids: Sequence | None = None,
                                 **kwargs) -> list[float]:
        out = []
        for n in _lengths("soft_overlong_punishment", completion_ids, len(completions)):
            if n <= free:
                out.append(0.0)
            elif n <= max_completion_len:
                out.append((free - n) / soft_punish_cache)
            else:
                out.append(-1.0)
        return out

    return soft_overlong_punishment


BUILTIN_REWARDS: dict[str, str] = {
    "accuracy": "exact-answer accuracy against the 'answer' column (1/0)",
    "format": "<think>...</think><answer>...</answer> format (1/0)",
    "think_format": "<think>...</think> first (1/0)",
    "length": "-len(completion_ids) / max_completion_length",
    "soft_overlong": "DAPO soft overlong punishment (max_completion_length, soft_punish_cache)",
}
"""Built-in reward names (for ``--reward_funcs``) and what they score."""


_TRL_NAMES = {"accuracy_reward": "accuracy", "format_reward": "format", "think_format_reward": "think_format",
              "get_length_penalty": "length", "get_soft_overlong_punishment": "soft_overlong"}


def load_callable(name: str, what: str = "function") -> Callable:
    """The callable a ``module:attribute`` or ``path/to/file.py:attribute`` path names (reward functions, tools,
    environment classes on the command line). Naming code runs it, so the module or file imported is logged (a
    config that names code is code, docs/grpo.md)."""
    if ":" not in name:
        raise ValueError(f"{what} {name!r}: give a 'module:name' or 'file.py:name' path.")
    module_name, _, attr = name.rpartition(":")
    if module_name.endswith(".py"):
        logger.warning("%s %r: running the Python file %s to import it.", what, name, os.path.abspath(module_name))
        spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(module_name))[0], module_name)
        if spec is None or spec.loader is None:
            raise ValueError(f"Cannot load {what} {name!r} from {module_name!r}.")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(module_name)
            logger.warning("%s %r: imported module %s from %s.", what, name, module_name,
                           getattr(module, "__file__", None) or "(built in)")
        except ImportError as err:
            raise ValueError(f"Cannot import module {module_name!r} of {what} {name!r}: {err}") from err
    func = getattr(module, attr, None)
    if func is None or not callable(func):
        raise ValueError(f"Module {module_name!r} has no callable {attr!r} ({what} {name!r}).")
    return func


def get_reward_func(name: str, *, max_completion_length: int | None = None, soft_punish_cache: int | None = None,
                    length_coef: float = 1.0) -> Callable[..., list]:
    """A reward function from a built-in name (see :data:`BUILTIN_REWARDS`) or a ``module:function`` path
    (``my_rewards:exact``; a ``path/to/file.py:function`` file path also works). TRL's spellings of the built-in
    functions (``accuracy_reward``, ``think_format_reward``, ``get_soft_overlong_punishment``) are accepted."""
    name = _TRL_NAMES.get(name, name)
    if name == "accuracy":
        return accuracy_reward
    if name == "format":
        return format_reward
    if name == "think_format":
        return think_format_reward
    if name in ("length", "soft_overlong"):
        if max_completion_length is None:
            raise ValueError(f"The {name!r} reward needs max_completion_length.")
        if name == "length":
            return get_length_penalty(max_completion_length, length_coef)
        cache = soft_punish_cache if soft_punish_cache is not None else max(max_completion_length // 4, 1)
        return get_soft_overlong_punishment(max_completion_length, min(cache, max_completion_length))
    if ":" not in name:
        raise ValueError(f"Unknown reward function {name!r}. Built-in names: {', '.join(BUILTIN_REWARDS)}; or give "
                         "a 'module:function' path to your own function.")
    return load_callable(name, "reward function")
