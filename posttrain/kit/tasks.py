"""Synthetic tasks with exactly checkable answers.

Every task produces a *question* (a single line of text, e.g. ``"What is 23+58?"``) and an
*answer* (e.g. ``"81"``), deterministically from a :class:`random.Random`. Tasks can check a
completion (:meth:`Task.is_correct`), make a plausible wrong answer for rejected completions
(:meth:`Task.wrong_answer`), and write out step-by-step solutions, correct
(:meth:`Task.steps`) or with an error introduced at a chosen step
(:meth:`Task.corrupted_steps`), for process supervision.

The last step of every solution is ``"Answer: <answer>"``.

This module is pure Python (no torch, no datasets) so it is cheap to import.
"""

from __future__ import annotations

import random
import re
import string
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

__all__ = [
    "TASKS",
    "AdditionTask",
    "CopyTask",
    "ReverseTask",
    "SortTask",
    "Task",
    "completion_text",
    "get_task",
    "question_text",
]

Message = Mapping[str, Any]
TextOrMessages = str | Sequence[Message] | Message


def question_text(prompt: TextOrMessages) -> str:
    """Return the bare question in ``prompt``.

    Accepts a standard prompt string (surrounding whitespace is ignored, and only the first
    line is kept, so a full ``prompt + completion`` text also works), a single message dict,
    or a list of messages (the first ``user`` message is used).
    """
    if isinstance(prompt, str):
        text = prompt.strip()
        return text.split("\n", 1)[0].strip()
    if isinstance(prompt, Mapping):
        return question_text(str(prompt.get("content", "")))
    messages = list(prompt)
    for message in messages:
        if message.get("role") == "user":
            return question_text(str(message.get("content", "")))
    raise ValueError("no user message found in the conversational prompt")


def completion_text(completion: TextOrMessages) -> str:
    """Return the text of a completion: a string, a message dict, or a list of messages (last one)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        return str(completion.get("content", ""))
    messages = list(completion)
    if not messages:
        return ""
    return str(messages[-1].get("content", ""))


def _answer_step(answer: str) -> str:
    return f"Answer: {answer}"


class Task(ABC):
    """Base class of a synthetic task. Subclasses set :attr:`name` and implement the hooks."""

    name: ClassVar[str]

    @abstractmethod
    def sample(self, rng: random.Random) -> tuple[str, str]:
        """Draw one ``(question, answer)`` pair."""

    @abstractmethod
    def answer(self, prompt: TextOrMessages) -> str:
        """Compute the correct answer of a prompt (see :func:`question_text` for accepted forms)."""

    @abstractmethod
    def wrong_answer(self, rng: random.Random, prompt: TextOrMessages, answer: str | None = None) -> str:
        """Return a plausible answer that differs from the correct one."""

    @abstractmethod
    def _trace(self, question: str, rng: random.Random | None, at: int | None) -> list[str]:
        """Solution steps; if ``at`` is given, step ``at`` is wrong (``rng`` picks the error)."""

    def is_correct(self, prompt: TextOrMessages, completion: TextOrMessages) -> bool:
        """Exact match of the completion with the answer, after stripping surrounding whitespace."""
        return completion_text(completion).strip() == self.answer(prompt)

    def steps(self, prompt: TextOrMessages) -> list[str]:
        """Correct step-by-step solution; the last step is ``"Answer: <answer>"``."""
        return self._trace(question_text(prompt), None, None)

    def corrupted_steps(
        self, prompt: TextOrMessages, rng: random.Random, at: int | None = None
    ) -> tuple[list[str], int]:
        """Solution with an error at step ``at`` (random if ``None``).

        Steps before ``at`` are identical to :meth:`steps`; step ``at`` is wrong; later steps
        carry on from the wrong state, so the final answer is wrong too. Returns the steps and
        the index of the first wrong step.
        """
        question = question_text(prompt)
        num_steps = len(self._trace(question, None, None))
        if at is None:
            at = rng.randrange(num_steps)
        if not 0 <= at < num_steps:
            raise ValueError(f"step index {at} out of range for a {num_steps}-step solution")
        return self._trace(question, rng, at), at

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"


class AdditionTask(Task):
    """``"What is 23+58?"`` -> ``"81"``.

    Args:
        digits: number of digits of each operand (the maximum, if ``min_digits`` is set).
        min_digits: if set, each operand has between ``min_digits`` and ``digits`` digits.
    """

    name = "addition"
    _pattern = re.compile(r"^What is (\d+)\+(\d+)\?$")

    def __init__(self, digits: int = 2, min_digits: int | None = None) -> None:
        min_digits = digits if min_digits is None else min_digits
        if not 1 <= min_digits <= digits:
            raise ValueError(f"need 1 <= min_digits <= digits, got min_digits={min_digits}, digits={digits}")
        self.digits = digits
        self.min_digits = min_digits

    def _operand(self, rng: random.Random) -> int:
        d = rng.randint(self.min_digits, self.digits)
        low = 0 if d == 1 else 10 ** (d - 1)
        return rng.randint(low, 10**d - 1)

    def sample(self, rng: random.Random) -> tuple[str, str]:
        a, b = self._operand(rng), self._operand(rng)
        return f"What is {a}+{b}?", str(a + b)

    def _parse(self, prompt: TextOrMessages) -> tuple[int, int]:
        question = question_text(prompt)
        match = self._pattern.match(question)
        if match is None:
            raise ValueError(f"not an addition prompt: {question!r}")
        return int(match.group(1)), int(match.group(2))

    def answer(self, prompt: TextOrMessages) -> str:
        a, b = self._parse(prompt)
        return str(a + b)

    def wrong_answer(self, rng: random.Random, prompt: TextOrMessages, answer: str | None = None) -> str:
        a, b = self._parse(prompt)
        total = a + b
        width = len(str(total))
        digits_a, digits_b = f"{a:0{width}d}", f"{b:0{width}d}"
        forgot_carries = int("".join(str((int(x) + int(y)) % 10) for x, y in zip(digits_a, digits_b, strict=True)))
        candidates = {total + 1, total - 1, total + 10, total - 10, forgot_carries}
        # keep lengths close to the right one ("forgot carries" can drop leading digits: 63+43 -> 6)
        options = sorted(c for c in candidates if c >= 0 and c != total and len(str(c)) >= len(str(total)) - 1)
        return str(rng.choice(options))

    def _trace(self, question: str, rng: random.Random | None, at: int | None) -> list[str]:
        a, b = self._parse(question)
        xs, ys = str(a)[::-1], str(b)[::-1]
        steps: list[str] = []
        written: list[str] = []
        carry = 0
        col = 0
        while col < max(len(xs), len(ys)) or carry:
            x = int(xs[col]) if col < len(xs) else 0
            y = int(ys[col]) if col < len(ys) else 0
            s = x + y + carry
            if at is not None and len(steps) == at:
                assert rng is not None
                only_carry = col >= max(len(xs), len(ys))  # lowering it would drop the leading digit
                s = s + 1 if s == 0 or only_carry else s + rng.choice((-1, 1))
            steps.append(f"column {col + 1}: {x}+{y}+{carry}={s}, write {s % 10}, carry {s // 10}")
            written.append(str(s % 10))
            carry = s // 10
            col += 1
        result = str(int("".join(reversed(written))))
        if at is not None and len(steps) == at:  # the final step is the wrong one
            assert rng is not None
            result = self.wrong_answer(rng, question)
        steps.append(_answer_step(result))
        return steps


class _SequenceTask(Task):
    """Shared logic of tasks over a space-separated sequence of symbols."""

    prefix: ClassVar[str]
    default_alphabet: ClassVar[str]

    def __init__(self, min_len: int = 3, max_len: int = 6, alphabet: str | None = None) -> None:
        if not 1 <= min_len <= max_len:
            raise ValueError(f"need 1 <= min_len <= max_len, got min_len={min_len}, max_len={max_len}")
        alphabet = self.default_alphabet if alphabet is None else alphabet
        if len(set(alphabet)) < 2 or any(c.isspace() for c in alphabet):
            raise ValueError("alphabet needs at least 2 distinct non-space symbols")
        self.min_len = min_len
        self.max_len = max_len
        self.alphabet = alphabet

    @abstractmethod
    def solve(self, items: list[str]) -> list[str]:
        """Map the input sequence to the answer sequence."""

    def sample(self, rng: random.Random) -> tuple[str, str]:
        length = rng.randint(self.min_len, self.max_len)
        items = [rng.choice(self.alphabet) for _ in range(length)]
        return f"{self.prefix}: {' '.join(items)}", " ".join(self.solve(items))

    def _parse(self, prompt: TextOrMessages) -> list[str]:
        question = question_text(prompt)
        head = f"{self.prefix}:"
        if not question.startswith(head):
            raise ValueError(f"not a {self.name} prompt: {question!r}")
        return question[len(head) :].split()

    def answer(self, prompt: TextOrMessages) -> str:
        return " ".join(self.solve(self._parse(prompt)))

    def _other_symbol(self, rng: random.Random, symbol: str) -> str:
        return rng.choice([c for c in sorted(set(self.alphabet)) if c != symbol])

    def wrong_answer(self, rng: random.Random, prompt: TextOrMessages, answer: str | None = None) -> str:
        items = self._parse(prompt)
        correct = self.solve(items)
        candidates: list[list[str]] = []
        if items != correct:
            candidates.append(list(items))
        for i in range(len(correct) - 1):
            if correct[i] != correct[i + 1]:
                swapped = list(correct)
                swapped[i], swapped[i + 1] = swapped[i + 1], swapped[i]
                candidates.append(swapped)
        if len(correct) > 1:
            candidates.append(correct[:-1])
        i = rng.randrange(len(correct))
        replaced = list(correct)
        replaced[i] = self._other_symbol(rng, correct[i])
        candidates.append(replaced)
        choice = rng.choice(candidates)
        assert choice != correct
        return " ".join(choice)


class _BuildTask(_SequenceTask):
    """Sequence tasks solved by taking the input symbols one at a time in some order."""

    @abstractmethod
    def _order(self, items: list[str]) -> list[str]: ...

    def solve(self, items: list[str]) -> list[str]:
        return self._order(items)

    def _trace(self, question: str, rng: random.Random | None, at: int | None) -> list[str]:
        steps: list[str] = []
        built: list[str] = []
        for symbol in self._order(self._parse(question)):
            if at is not None and len(steps) == at:
                assert rng is not None
                symbol = self._other_symbol(rng, symbol)
            built.append(symbol)
            steps.append(f"take {symbol}: {' '.join(built)}")
        result = " ".join(built)
        if at is not None and len(steps) == at:
            assert rng is not None
            result = self.wrong_answer(rng, question)
        steps.append(_answer_step(result))
        return steps


class ReverseTask(_BuildTask):
    """``"Reverse: c a t"`` -> ``"t a c"`` (lowercase letters, length in ``[min_len, max_len]``)."""

    name = "reverse"
    prefix = "Reverse"
    default_alphabet = string.ascii_lowercase

    def _order(self, items: list[str]) -> list[str]:
        return items[::-1]


class CopyTask(_BuildTask):
    """``"Copy: c a t"`` -> ``"c a t"`` (lowercase letters, length in ``[min_len, max_len]``)."""

    name = "copy"
    prefix = "Copy"
    default_alphabet = string.ascii_lowercase

    def _order(self, items: list[str]) -> list[str]:
        return list(items)


class SortTask(_SequenceTask):
    """``"Sort: 3 1 2"`` -> ``"1 2 3"`` (digits, length in ``[min_len, max_len]``).

    Steps are insertion sort: ``"insert 1: 1 3"`` inserts each digit before the first larger one.
    """

    name = "sort"
    prefix = "Sort"
    default_alphabet = string.digits

    def solve(self, items: list[str]) -> list[str]:
        return sorted(items)

    @staticmethod
    def _insert_at(built: list[str], symbol: str) -> int:
        return next((i for i, other in enumerate(built) if other > symbol), len(built))

    def _trace(self, question: str, rng: random.Random | None, at: int | None) -> list[str]:
        steps: list[str] = []
        built: list[str] = []
        for symbol in self._parse(question):
            pos = self._insert_at(built, symbol)
            if at is not None and len(steps) == at:
                assert rng is not None
                correct = built[:pos] + [symbol] + built[pos:]
                wrong_positions = [p for p in range(len(built) + 1) if built[:p] + [symbol] + built[p:] != correct]
                if wrong_positions:
                    pos = rng.choice(wrong_positions)
                else:  # inserting anywhere gives the same list: insert a different digit instead
                    symbol = self._other_symbol(rng, symbol)
            built.insert(pos, symbol)
            steps.append(f"insert {symbol}: {' '.join(built)}")
        result = " ".join(built)
        if at is not None and len(steps) == at:
            assert rng is not None
            result = self.wrong_answer(rng, question)
        steps.append(_answer_step(result))
        return steps


TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (AdditionTask, ReverseTask, SortTask, CopyTask)}
"""Task classes by name."""


def get_task(task: str | Task, **task_kwargs: Any) -> Task:
    """Return a task instance from its name (``task_kwargs`` go to its constructor), or ``task`` itself."""
    if isinstance(task, Task):
        if task_kwargs:
            raise ValueError("task_kwargs cannot be given together with a Task instance")
        return task
    try:
        cls = TASKS[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(TASKS)}") from None
    return cls(**task_kwargs)
