"""Datasets given as streams (``datasets.IterableDataset``, e.g. ``load_dataset(..., streaming=True)``): what dataset
preparation may ask of a split without reading it all, in one place for every trainer.

A stream has no length and no random access: preparation maps it lazily (rows are tokenized as training reads them),
reads its first row to tell the format, and anything that needs the whole split (precomputed reference log-probs, a
count of dropped rows before training) either works row by row or says clearly that it cannot stream. Training on a
stream needs ``max_steps`` (the Trainer cannot know an epoch's length).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .formats import DatasetFormatError

logger = logging.getLogger("posttrain")


def is_streaming(dataset) -> bool:
    """Whether ``dataset`` is a stream (no length, no indexing): a ``datasets.IterableDataset``."""
    from datasets import IterableDataset

    return isinstance(dataset, IterableDataset)


def column_names(dataset) -> list[str]:
    """The column names of a ``Dataset`` or ``IterableDataset`` (read from its first row when a stream's features are
    not known, e.g. after a ``map``), or of a dataset dict's first split."""
    names = dataset.column_names
    if isinstance(names, dict):  # a dataset dict: its first split
        return column_names(next(iter(dataset.values())))
    if names is not None:
        return list(names)
    row = next(iter(dataset), None)
    return list(row) if row is not None else []


def first_row(dataset, split: str) -> dict[str, Any]:
    """The first row of ``dataset`` (a stream's first element), or a clear error when the split is empty."""
    if is_streaming(dataset):
        row = next(iter(dataset), None)
    else:
        row = dataset[0] if len(dataset) else None
    if row is None:
        raise DatasetFormatError(f"The {split} dataset is empty.")
    return row


def map_options(dataset, num_proc: int | None, desc: str) -> dict[str, Any]:
    """The ``map`` options a split takes: processes and a progress bar for a ``Dataset``; none for a stream (its
    ``map`` is lazy and takes neither)."""
    return {} if is_streaming(dataset) else {"num_proc": num_proc, "desc": desc}


def drop_as_read(dataset, keep: Callable[[dict, int], bool], note: Callable[[dict, int], str]):
    """A stream without the rows ``keep(row, index)`` rejects, dropped as it is read (a stream is not read ahead, so
    nothing is counted): ``note(row, index)`` is logged as a warning once, at the first."""
    warned = []

    def check(row, i):
        if keep(row, i):
            return True
        if not warned:
            warned.append(True)
            logger.warning(note(row, i))
        return False

    return dataset.filter(check, with_indices=True)


def refuse_transform(dataset, split: str, can_skip: bool = False) -> None:
    """A split with an on-the-fly transform (``Dataset.with_transform()``, ``set_transform``) cannot be prepared:
    ``map`` reads its rows without the transform, which would be silently lost. ``can_skip``: the trainer takes
    ``dataset_kwargs={"skip_prepare_dataset": True}`` (SFT), which the message then offers."""
    if (getattr(dataset, "format", None) or {}).get("type") == "custom":
        raise ValueError(
            f"The {split} dataset has a transform (Dataset.with_transform() or set_transform()), which dataset "
            "preparation would not apply (map() reads the rows without it). Apply it with dataset.map(...) first"
            + (", or pass dataset_kwargs={'skip_prepare_dataset': True} with a transform that gives trainer-ready "
               "rows (tokenized, with the columns the collator takes): it then runs as the rows are read."
               if can_skip else "."))


def require_sized(dataset, split: str, feature: str) -> None:
    """Refuse a stream where ``feature`` needs the whole split before training."""
    if is_streaming(dataset):
        raise ValueError(f"{feature} is not supported with IterableDataset: it needs the whole {split} dataset "
                         "before training, but that split is a stream. Load it without streaming=True (or convert it "
                         "with Dataset.from_generator), or turn the option off.")


__all__ = ["is_streaming", "column_names", "drop_as_read", "first_row", "map_options", "refuse_transform", "require_sized"]
