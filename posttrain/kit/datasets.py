"""Synthetic datasets in TRL's dataset formats, and writing/reading them to files.

Conventions for the *standard* (plain text) formats: a prompt is the question followed by a
newline, and a completion is the bare answer with nothing after it (trainers append EOS)::

    {"prompt": "What is 23+58?\\n", "completion": "81"}

so ``prompt + completion == "What is 23+58?\\n81"`` (the ``text`` of ``language_modeling`` rows,
and the ``chosen``/``rejected`` texts of ``preference_implicit`` rows). With the kit tokenizer the
newline is always its own token, so the tokens of the prompt are a prefix of the tokens of
``prompt + completion``. *Conversational* formats use a user message holding the question and an
assistant message holding the answer (plus an optional system message first).

Every format except ``language_modeling`` also has an ``answer`` column with the correct answer.

The vision tasks (:data:`~posttrain.kit.images.VISION_TASKS`, e.g. ``colors``) add an ``images`` column; see
:mod:`posttrain.kit.images`. Images need ``.parquet`` or a ``save_to_disk`` folder to be written.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from posttrain.kit.images import VIDEO_TASKS, VISION_TASKS, make_vision_rows
from posttrain.kit.tasks import Task, get_task, question_text

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = [
    "FORMATS",
    "PROMPT_SUFFIX",
    "STEP_ERRORS",
    "make_dataset",
    "make_rows",
    "question_keys",
    "read_dataset",
    "write_dataset",
]

FORMATS: tuple[str, ...] = (
    "language_modeling",
    "prompt_only",
    "prompt_completion",
    "preference",
    "preference_implicit",
    "unpaired_preference",
    "stepwise",
)
"""Supported dataset formats (TRL's names; ``preference`` has an explicit prompt)."""

STEP_ERRORS: tuple[str, ...] = ("first", "independent")
"""How ``stepwise`` rows are made wrong (see :func:`make_dataset`)."""

PROMPT_SUFFIX = "\n"
"""Appended to the question to make a standard prompt."""

_DISK_SUFFIXES = ("", ".hf", ".arrow")
_FILE_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv")


def question_keys(exclude: Any) -> set[str]:
    """The bare questions of a dataset made by this module (any format), or of an iterable of
    prompts, texts or conversations (see :func:`~posttrain.kit.tasks.question_text`)."""
    if exclude is None:
        return set()
    column_names = getattr(exclude, "column_names", None)
    if column_names is not None:  # a datasets.Dataset
        for column in ("prompt", "messages", "chosen", "text"):
            if column in column_names:
                return {question_text(value) for value in exclude[column]}
        raise ValueError(f"cannot find prompts to exclude in a dataset with columns {column_names}")
    if isinstance(exclude, (str, Mapping)):
        return {question_text(exclude)}
    keys: set[str] = set()
    for value in exclude:  # prompts, or several datasets
        if hasattr(value, "column_names"):
            keys |= question_keys(value)
        else:
            keys.add(question_text(value))
    return keys


def _sample_questions(task: Task, n: int, rng: random.Random, exclude: set[str], unique: bool) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    max_tries = 50 * n + 1000
    tries = 0
    while len(pairs) < n:
        tries += 1
        if tries > max_tries:
            raise ValueError(
                f"could only draw {len(pairs)} of {n} {'unique ' if unique else ''}questions for {task!r} "
                f"({len(exclude)} excluded): lower n or use a larger task (e.g. more digits or longer sequences)"
                + (", or pass unique=False" if unique else "")
            )
        question, answer = task.sample(rng)
        if question in exclude or (unique and question in seen):
            continue
        seen.add(question)
        pairs.append((question, answer))
    return pairs


def make_rows(
    task: str | Task = "addition",
    format: str = "prompt_completion",
    n: int = 1000,
    seed: int = 0,
    conversational: bool = False,
    *,
    exclude: Any = None,
    unique: bool = True,
    system_prompt: str | None = None,
    step_errors: str = "first",
    **task_kwargs: Any,
) -> list[dict[str, Any]]:
    """Rows of :func:`make_dataset` as a list of dicts (no ``datasets`` import)."""
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; choose one of {list(FORMATS)}")
    if format == "stepwise" and conversational:
        raise ValueError("the stepwise format is standard (plain text) only")
    if step_errors not in STEP_ERRORS:
        raise ValueError(f"unknown step_errors {step_errors!r}; choose one of {list(STEP_ERRORS)}")
    if step_errors != "first" and format != "stepwise":
        raise ValueError(f"step_errors={step_errors!r} only applies to the stepwise format, not {format!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    task_obj = get_task(task, **task_kwargs)
    pairs = _sample_questions(task_obj, n, random.Random(seed), question_keys(exclude), unique)
    # A separate stream for wrong answers and labels: the same seed gives the same questions in every format.
    rng = random.Random(f"posttrain.kit/{task_obj.name}/{format}/{seed}")
    system = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []

    def prompt_of(question: str) -> Any:
        if conversational:
            return [*system, {"role": "user", "content": question}]
        return question + PROMPT_SUFFIX

    def completion_of(text: str) -> Any:
        return [{"role": "assistant", "content": text}] if conversational else text

    def joined(question: str, text: str) -> Any:
        if conversational:
            return prompt_of(question) + completion_of(text)
        return prompt_of(question) + text

    rows: list[dict[str, Any]] = []
    for question, answer in pairs:
        row: dict[str, Any]
        if format == "language_modeling":
            row = {"messages": joined(question, answer)} if conversational else {"text": joined(question, answer)}
        elif format == "prompt_only":
            row = {"prompt": prompt_of(question)}
        elif format == "prompt_completion":
            row = {"prompt": prompt_of(question), "completion": completion_of(answer)}
        elif format == "preference":
            wrong = task_obj.wrong_answer(rng, question, answer)
            row = {"prompt": prompt_of(question), "chosen": completion_of(answer), "rejected": completion_of(wrong)}
        elif format == "preference_implicit":
            wrong = task_obj.wrong_answer(rng, question, answer)
            row = {"chosen": joined(question, answer), "rejected": joined(question, wrong)}
        elif format == "unpaired_preference":
            label = rng.random() < 0.5
            text = answer if label else task_obj.wrong_answer(rng, question, answer)
            row = {"prompt": prompt_of(question), "completion": completion_of(text), "label": label}
        elif step_errors == "independent":  # stepwise: every step wrong or right on its own
            steps = task_obj.steps(question)
            labels = []
            for i in range(len(steps)):
                wrong = rng.random() < 0.5
                if wrong:  # step i made wrong, given the correct steps before it
                    steps[i] = task_obj.corrupted_steps(question, rng, at=i)[0][i]
                labels.append(not wrong)
            row = {"prompt": prompt_of(question), "completions": steps, "labels": labels}
        else:  # stepwise
            if rng.random() < 0.5:
                steps = task_obj.steps(question)
                labels = [True] * len(steps)
            else:
                steps, first_wrong = task_obj.corrupted_steps(question, rng)
                labels = [i < first_wrong for i in range(len(steps))]
            row = {"prompt": prompt_of(question), "completions": steps, "labels": labels}
        if format != "language_modeling":
            row["answer"] = answer
        rows.append(row)
    return rows


def make_dataset(
    task: str | Task = "addition",
    format: str = "prompt_completion",
    n: int = 1000,
    seed: int = 0,
    conversational: bool = False,
    *,
    exclude: Any = None,
    unique: bool = True,
    system_prompt: str | None = None,
    step_errors: str = "first",
    **task_kwargs: Any,
) -> Dataset:
    """Make a synthetic dataset in one of TRL's formats.

    Args:
        task: task name (a key of :data:`~posttrain.kit.tasks.TASKS`) or a :class:`Task`.
        format: one of :data:`FORMATS`:

            * ``language_modeling``: ``text`` / ``messages`` (user question + assistant answer);
            * ``prompt_only``: ``prompt``;
            * ``prompt_completion``: ``prompt``, ``completion``;
            * ``preference``: ``prompt``, ``chosen`` (correct), ``rejected`` (wrong);
            * ``preference_implicit``: ``chosen``, ``rejected``, each including the prompt;
            * ``unpaired_preference``: ``prompt``, ``completion``, ``label`` (bool, about half True);
            * ``stepwise``: ``prompt``, ``completions`` (steps), ``labels`` (bool per step; all
              steps from the first wrong one on are False); standard format only.

            All but ``language_modeling`` also have ``answer`` (the correct answer).
        n: number of rows.
        seed: sampling seed. Same arguments give the same rows; the same seed gives the same
            questions in every format; different seeds give mostly different questions.
        conversational: use lists of ``{"role", "content"}`` messages instead of plain strings.
        exclude: questions that must not appear: a dataset made by this module (any format), a
            list of such datasets, or an iterable of prompts, texts or conversations. Use it to
            keep evaluation prompts out of training data.
        unique: never repeat a question within the dataset.
        system_prompt: if set, conversational prompts start with this system message.
        step_errors: how ``stepwise`` rows go wrong. ``"first"`` (default): half of the rows are fully
            correct, the other half have one wrong step (uniformly placed) and carry on from the wrong state,
            and every step from the first wrong one on is labelled False (outcome-consistent labels, as in
            Math-Shepherd). ``"independent"``: every step is wrong with probability 1/2, on its own, given the
            correct steps before it (later steps carry on from the correct solution), and each label says
            whether that step itself is right: balanced labels that are checkable from the step and what
            precedes it.
        **task_kwargs: passed to the task constructor, e.g. ``digits=3`` for ``addition``.

    A vision task (``"colors"``; ``"motion"``: a ``videos`` column of 4-frame clips) gives rows with an ``images`` column (:func:`~posttrain.kit.images.make_vision_rows`;
    its options, e.g. ``noise=24``, go in ``task_kwargs``); ``exclude`` and ``step_errors`` do not apply to it
    (images are random: a different seed gives held-out rows).
    """
    from datasets import Dataset

    if isinstance(task, str) and task in VISION_TASKS:
        if exclude not in (None, set()) or step_errors != "first":
            raise ValueError(f"exclude and step_errors do not apply to the vision task {task!r}; use another seed "
                             "for held-out rows")
        rows = make_vision_rows(task, format, n, seed, conversational, system_prompt=system_prompt, **task_kwargs)
        if task not in VIDEO_TASKS:
            return Dataset.from_list(rows)
        from datasets import Features, Image, List

        # lists of lists of images are stored as images only when the features say so
        text = Dataset.from_list([{k: v for k, v in row.items() if k != "videos"} for row in rows])
        return Dataset.from_list(rows, features=Features({"videos": List(List(Image())), **text.features}))
    rows = make_rows(
        task,
        format,
        n,
        seed,
        conversational,
        exclude=exclude,
        unique=unique,
        system_prompt=system_prompt,
        step_errors=step_errors,
        **task_kwargs,
    )
    return Dataset.from_list(rows)


def _kind(path: str | os.PathLike[str]) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in _FILE_SUFFIXES:
        return suffix
    if suffix in _DISK_SUFFIXES or Path(path).is_dir():
        return "disk"
    raise ValueError(
        f"cannot tell the file type of {os.fspath(path)!r}: use one of {', '.join(_FILE_SUFFIXES)} "
        "or a folder path without suffix (save_to_disk)"
    )


def write_dataset(dataset: Dataset, path: str | os.PathLike[str]) -> str:
    """Write ``dataset`` to ``path``; the type is chosen by the suffix.

    ``.jsonl`` (one JSON object per line), ``.json`` (a JSON array), ``.parquet``, ``.csv`` (flat
    columns only) or, for a path without suffix, a ``save_to_disk`` folder. Parent folders are
    created. Returns the path as a string.
    """
    kind = _kind(path)
    target = Path(path)
    images = _image_columns(dataset)
    if images and kind in (".csv", ".json", ".jsonl"):
        raise ValueError(f"the columns {images} hold images, which {kind} cannot store; write .parquet or a folder "
                         "(save_to_disk) instead")
    target.parent.mkdir(parents=True, exist_ok=True)
    if kind == ".csv":
        from datasets import Value

        nested = [name for name, feature in dataset.features.items() if not isinstance(feature, Value)]
        if nested:
            raise ValueError(
                f"CSV can only hold flat columns, but {nested} hold lists or dicts; "
                "write .jsonl, .json or .parquet instead"
            )
        dataset.to_csv(str(target), index=False)
    elif kind == ".jsonl":
        with target.open("w", encoding="utf-8") as f:
            for row in dataset:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    elif kind == ".json":
        with target.open("w", encoding="utf-8") as f:
            json.dump(list(dataset), f, ensure_ascii=False)
            f.write("\n")
    elif kind == ".parquet":
        dataset.to_parquet(str(target))
    else:
        dataset.save_to_disk(str(target))
    return str(target)


def _image_columns(dataset: Dataset) -> list[str]:
    from datasets import Image

    def holds_image(feature: Any) -> bool:  # Image, or a list of them
        while feature is not None:
            if isinstance(feature, Image):
                return True
            feature = getattr(feature, "feature", None)
        return False

    return [name for name, feature in dataset.features.items() if holds_image(feature)]


def read_dataset(path: str | os.PathLike[str]) -> Dataset:
    """Read a dataset written by :func:`write_dataset` (same suffix rules)."""
    from datasets import Dataset, load_from_disk

    kind = _kind(path)
    target = Path(path)
    if kind == "disk":
        loaded = load_from_disk(str(target))
        if not isinstance(loaded, Dataset):
            raise ValueError(f"{target} holds a DatasetDict, not a Dataset")
        return loaded
    if kind == ".jsonl":
        with target.open(encoding="utf-8") as f:
            return Dataset.from_list([json.loads(line) for line in f if line.strip()])
    if kind == ".json":
        with target.open(encoding="utf-8") as f:
            return Dataset.from_list(json.load(f))
    if kind == ".parquet":
        import pyarrow.parquet as pq

        return Dataset(pq.read_table(str(target)))
    import pandas as pd

    # Read every column as text (so answers like "081" stay strings), then restore bool columns.
    frame = pd.read_csv(target, dtype=str, keep_default_na=False)
    for column in frame.columns:
        values = set(frame[column])
        if values and values <= {"True", "False"}:
            frame[column] = frame[column] == "True"
    return Dataset.from_pandas(frame, preserve_index=False)
