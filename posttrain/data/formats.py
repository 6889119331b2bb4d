"""Dataset formats: detection and validation.

posttrain accepts the dataset formats TRL users know. Each *kind* is identified by its columns, and
each comes in a *standard* form (strings) and a *conversational* form (lists of
``{"role": ..., "content": ...}`` messages):

==========================  ===========================================================
kind                        columns
==========================  ===========================================================
``language_modeling``       ``text`` (standard) or ``messages`` (conversational)
``prompt_only``             ``prompt``
``prompt_completion``       ``prompt``, ``completion``
``preference``              ``prompt``, ``chosen``, ``rejected`` (explicit prompt)
``preference_implicit``     ``chosen``, ``rejected`` (prompt included in both)
``unpaired_preference``     ``prompt``, ``completion``, ``label`` (bool)
``stepwise``                ``prompt``, ``completions`` (list of steps), ``labels`` (bools)
==========================  ===========================================================

Errors raised here are :class:`DatasetFormatError` and always name the column, the row and what was
expected, so a user can fix the file without reading a stack trace.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

LANGUAGE_MODELING = "language_modeling"
PROMPT_ONLY = "prompt_only"
PROMPT_COMPLETION = "prompt_completion"
PREFERENCE = "preference"
PREFERENCE_IMPLICIT = "preference_implicit"
UNPAIRED_PREFERENCE = "unpaired_preference"
STEPWISE = "stepwise"

# Most specific first: the first kind whose columns are all present wins.
_KIND_COLUMNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (STEPWISE, ("prompt", "completions", "labels")),
    (UNPAIRED_PREFERENCE, ("prompt", "completion", "label")),
    (PREFERENCE, ("prompt", "chosen", "rejected")),
    (PREFERENCE_IMPLICIT, ("chosen", "rejected")),
    (PROMPT_COMPLETION, ("prompt", "completion")),
    (PROMPT_ONLY, ("prompt",)),
    (LANGUAGE_MODELING, ("messages",)),
    (LANGUAGE_MODELING, ("text",)),
)
KINDS = (
    LANGUAGE_MODELING,
    PROMPT_ONLY,
    PROMPT_COMPLETION,
    PREFERENCE,
    PREFERENCE_IMPLICIT,
    UNPAIRED_PREFERENCE,
    STEPWISE,
)
_EXAMPLE_ROW = {
    LANGUAGE_MODELING: '{"text": "..."} or {"messages": [{"role": "user", "content": "..."}, ...]}',
    PROMPT_ONLY: '{"prompt": "..."}',
    PROMPT_COMPLETION: '{"prompt": "...", "completion": "..."}',
    PREFERENCE: '{"prompt": "...", "chosen": "...", "rejected": "..."}',
    PREFERENCE_IMPLICIT: '{"chosen": "...", "rejected": "..."}',
    UNPAIRED_PREFERENCE: '{"prompt": "...", "completion": "...", "label": true}',
    STEPWISE: '{"prompt": "...", "completions": ["step 1", "step 2"], "labels": [true, false]}',
}


class DatasetFormatError(ValueError):
    """A dataset does not have the format a trainer needs. The message names column, row and fix."""


@dataclass(frozen=True)
class DatasetFormat:
    kind: str
    conversational: bool

    def __str__(self) -> str:
        return f"{'conversational' if self.conversational else 'standard'} {self.kind}"


def is_conversational_value(value: Any) -> bool:
    """True for a list of ``{"role", "content"}`` message dicts."""
    return (
        isinstance(value, list)
        and len(value) > 0
        and isinstance(value[0], Mapping)
        and "role" in value[0]
        and "content" in value[0]
    )


def _main_column(kind: str, columns: Iterable[str]) -> str:
    cols = set(columns)
    if kind == LANGUAGE_MODELING:
        return "messages" if "messages" in cols else "text"
    if kind == PREFERENCE_IMPLICIT:
        return "chosen"
    return "prompt"


def detect_format(columns: Iterable[str], example: Mapping[str, Any] | None = None, text_field: str = "text") -> DatasetFormat:
    """Identify the dataset kind from its column names (and standard vs conversational from a row).

    ``text_field`` lets a language-modeling dataset keep its text in another column
    (``dataset_text_field`` in :class:`~posttrain.SFTConfig`).
    """
    cols = set(columns)
    if text_field != "text" and text_field in cols:
        cols = (cols - {"text"}) | {"text"}
    for kind, needed in _KIND_COLUMNS:
        if all(c in cols for c in needed):
            conversational = False
            if example is not None:
                key = _main_column(kind, cols)
                if kind == LANGUAGE_MODELING and key == "text":
                    key = text_field if text_field in example else "text"
                value = example.get(key)
                # A 'messages' column is conversational by definition; any list is meant as messages.
                conversational = key == "messages" or isinstance(value, list) and not (
                    kind == STEPWISE and key == "completions")
            return DatasetFormat(kind, conversational)
    raise DatasetFormatError(
        f"Cannot tell the dataset format from its columns {sorted(columns)}. Expected one of:\n"
        + "\n".join(f"  {k}: {v}" for k, v in _EXAMPLE_ROW.items())
        + "\nRename your columns (e.g. with `dataset.rename_column`) or pass a `formatting_func`."
    )


def require_kind(fmt: DatasetFormat, allowed: Sequence[str], trainer: str, hint: str = "") -> None:
    """Raise a clear error when a trainer gets a dataset kind it does not accept."""
    if fmt.kind not in allowed:
        wanted = "\n".join(f"  {k}: {_EXAMPLE_ROW[k]}" for k in allowed)
        raise DatasetFormatError(
            f"{trainer} needs a dataset of kind {', '.join(allowed)}, but got a {fmt} dataset. "
            f"Expected rows like:\n{wanted}" + (f"\n{hint}" if hint else "")
        )


def _check_text(value: Any, column: str, row: int, conversational: bool) -> None:
    if conversational:
        if not isinstance(value, list) or not value:
            raise DatasetFormatError(
                f"Row {row} (0-based), column '{column}': expected a non-empty list of messages "
                f'[{{"role": ..., "content": ...}}], got {_short(value)}.'
            )
        for j, msg in enumerate(value):
            if not isinstance(msg, Mapping) or "role" not in msg or "content" not in msg:
                raise DatasetFormatError(
                    f"Row {row} (0-based), column '{column}', message {j}: expected a dict with 'role' and 'content', "
                    f"got {_short(msg)}."
                )
            if msg["role"] not in ("system", "user", "assistant", "tool"):
                raise DatasetFormatError(
                    f"Row {row} (0-based), column '{column}', message {j}: unknown role {msg['role']!r}; "
                    "use system, user, assistant or tool."
                )
            if msg["content"] is None:
                raise DatasetFormatError(f"Row {row} (0-based), column '{column}', message {j}: 'content' is empty (None).")
    else:
        if not isinstance(value, str):
            raise DatasetFormatError(
                f"Row {row} (0-based), column '{column}': expected a string, got {type(value).__name__} {_short(value)}. "
                "(Mixing standard strings and conversational message lists in one dataset is not supported.)"
            )


def _short(value: Any, n: int = 60) -> str:
    s = repr(value)
    return s if len(s) <= n else s[: n - 3] + "..."


def validate_example(example: Mapping[str, Any], fmt: DatasetFormat, row: int, text_field: str = "text") -> None:
    """Check one row against its format; raise :class:`DatasetFormatError` naming row and column."""
    conv = fmt.conversational
    kind = fmt.kind
    if kind == LANGUAGE_MODELING:
        col = "messages" if conv else text_field
        _check_text(example.get(col), col, row, conv)
        if not conv and not example[col]:
            raise DatasetFormatError(f"Row {row} (0-based), column '{col}': the text is empty.")
        return
    text_columns = {
        PROMPT_ONLY: ("prompt",),
        PROMPT_COMPLETION: ("prompt", "completion"),
        PREFERENCE: ("prompt", "chosen", "rejected"),
        PREFERENCE_IMPLICIT: ("chosen", "rejected"),
        UNPAIRED_PREFERENCE: ("prompt", "completion"),
        STEPWISE: ("prompt",),
    }[kind]
    for col in text_columns:
        _check_text(example.get(col), col, row, conv)
    for col in ("completion", "chosen", "rejected"):
        if col in text_columns and not conv and not example[col]:
            raise DatasetFormatError(
                f"Row {row} (0-based), column '{col}': the completion is empty; every row needs a non-empty '{col}'."
            )
    if kind == UNPAIRED_PREFERENCE and not isinstance(example.get("label"), bool):
        raise DatasetFormatError(
            f"Row {row} (0-based), column 'label': expected a bool (true = desirable completion), got {_short(example.get('label'))}."
        )
    if kind == STEPWISE:
        steps, labels = example.get("completions"), example.get("labels")
        if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps) or not steps:
            raise DatasetFormatError(f"Row {row} (0-based), column 'completions': expected a non-empty list of step strings.")
        if not isinstance(labels, list) or not all(isinstance(b, bool) for b in labels):
            raise DatasetFormatError(f"Row {row} (0-based), column 'labels': expected a list of bools, one per step.")
        if len(steps) != len(labels):
            raise DatasetFormatError(
                f"Row {row} (0-based): 'completions' has {len(steps)} steps but 'labels' has {len(labels)}; "
                "give exactly one label per step."
            )


def validate_dataset(dataset, fmt: DatasetFormat | None = None, text_field: str = "text", max_rows: int | None = None) -> DatasetFormat:
    """Detect the format (if not given) and validate every row (or the first ``max_rows``)."""
    if len(dataset) == 0:
        raise DatasetFormatError("The dataset is empty: it has no rows to train on.")
    if fmt is None:
        fmt = detect_format(dataset.column_names, dataset[0], text_field=text_field)
    n = len(dataset) if max_rows is None else min(max_rows, len(dataset))
    for i in range(n):
        validate_example(dataset[i], fmt, i, text_field=text_field)
    return fmt
