"""Packing tokenized sequences into rows of at most ``max_length`` tokens.

Strategies (TRL's names):

* ``bfd`` — best-fit decreasing: sequences sorted longest first, each placed in the open row whose
  free space fits it most tightly; sequences longer than ``max_length`` are truncated.
* ``bfd_split`` — the same, but overlong sequences are split into ``max_length`` pieces instead.
* ``wrapped`` — concatenate everything and cut every ``max_length`` tokens (sequences can be cut).

Each packed row keeps ``seq_lengths``, the lengths of the sequences it holds, so the collator can restart
``position_ids`` at each boundary and the model never attends across sequences.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

PACKING_STRATEGIES = ("bfd", "bfd_split", "wrapped")


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Assign item indices to bins of ``capacity`` with best-fit decreasing. Every length must be <= capacity."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (free space, bin id)
    for i in order:
        size = lengths[i]
        if size > capacity:
            raise ValueError(f"item {i} has length {size} > capacity {capacity}")
        pos = bisect.bisect_left(free, (size, -1))
        if pos < len(free):
            space, b = free.pop(pos)
            bins[b].append(i)
            bisect.insort(free, (space - size, b))
        else:
            bins.append([i])
            bisect.insort(free, (capacity - size, len(bins) - 1))
    return bins


def rows_within_longest(lengths: Sequence[int]) -> list[list[int]]:
    """Indices of a batch's sequences grouped into rows no longer than its longest sequence (best fit decreasing):
    each row's indices ascending, rows ordered by their first index. The padding-free layout for attention kernels
    whose cost grows with the square of the row length (sdpa/eager)."""
    if len(lengths) < 2:
        return [list(range(len(lengths)))]
    return [sorted(b) for b in sorted(best_fit_decreasing(lengths, max(lengths)), key=min)]


def _lengths_column(columns: dict[str, list]) -> str:
    """The column whose sequences' lengths are packed: ``input_ids``, else the first (TRL packs any list columns)."""
    return "input_ids" if "input_ids" in columns else next(iter(columns))


def _pieces(columns: dict[str, list[list[int]]], max_length: int, split: bool) -> dict[str, list[list[int]]]:
    out: dict[str, list[list[int]]] = {k: [] for k in columns}
    main = columns[_lengths_column(columns)]
    for i in range(len(main)):
        length = len(main[i])
        starts = range(0, length, max_length) if split else ([0] if length else [])  # empty sequences: nothing to pack
        for s in starts:
            for k, col in columns.items():
                out[k].append(col[i][s : s + max_length])
    return out


def pack_columns(columns: dict[str, list[list[int]]], max_length: int, strategy: str = "bfd",
                 dataset_order: bool = True) -> dict[str, list]:
    """Pack token columns (``input_ids`` plus aligned masks) into rows with ``seq_lengths``. Inside a row the
    sequences keep the dataset's order (``dataset_order``), or the order best-fit placed them in (longest first: TRL's
    ``pack_dataset``)."""
    if not columns:
        raise ValueError("Nothing to pack: no list columns.")
    lengths_of = _lengths_column(columns)
    for name, col in columns.items():
        if len(col) != len(columns[lengths_of]) or any(len(a) != len(b) for a, b in zip(col, columns[lengths_of])):
            raise ValueError(f"Column {name!r} is not aligned with {lengths_of!r} (every row the same length in both); "
                             "only token-aligned list columns can be packed.")
    if strategy not in PACKING_STRATEGIES:
        raise ValueError(f"Unknown packing_strategy {strategy!r}; use one of {PACKING_STRATEGIES}.")
    if not max_length or max_length <= 0:
        raise ValueError("Packing needs a positive max_length (the length of each packed row).")
    keys = list(columns)
    if strategy == "wrapped":
        flat = {k: [t for seq in columns[k] for t in seq] for k in keys}
        boundaries, pos = [], 0
        for seq in columns[lengths_of]:
            pos += len(seq)
            boundaries.append(pos)
        out: dict[str, list] = {k: [] for k in keys}
        out["seq_lengths"] = []
        total = len(flat[lengths_of])
        b = 0
        for start in range(0, total, max_length):
            end = min(start + max_length, total)
            for k in keys:
                out[k].append(flat[k][start:end])
            cuts, prev = [], start
            while b < len(boundaries) and boundaries[b] <= end:
                if boundaries[b] > prev:
                    cuts.append(boundaries[b] - prev)
                    prev = boundaries[b]
                b += 1
            if prev < end:
                cuts.append(end - prev)
            out["seq_lengths"].append(cuts)
        return out
    pieces = _pieces(columns, max_length, split=strategy == "bfd_split")
    lengths = [len(s) for s in pieces[lengths_of]]
    bins = best_fit_decreasing(lengths, max_length)
    out = {k: [] for k in keys}
    out["seq_lengths"] = []
    for members in bins:
        if dataset_order:
            members = sorted(members)
        for k in keys:
            out[k].append([t for i in members for t in pieces[k][i]])
        out["seq_lengths"].append([lengths[i] for i in members])
    return out


_TOKEN_COLUMNS = ("input_ids", "labels", "completion_mask", "assistant_masks")


def pack_dataset(dataset, max_length: int, strategy: str = "bfd", columns: Sequence[str] | None = None):
    """Pack a tokenized :class:`datasets.Dataset` as a whole; other columns are dropped."""
    from datasets import Dataset

    keep = [c for c in (columns or _TOKEN_COLUMNS) if c in dataset.column_names]
    data = {k: dataset[k] for k in keep}
    return Dataset.from_dict(pack_columns(data, max_length, strategy))


def pack_stream(dataset, max_length: int, strategy: str = "bfd", columns: Sequence[str] | None = None,
                rows_at_a_time: int = 1000):
    """Pack a tokenized stream (``datasets.IterableDataset``) as it is read, ``rows_at_a_time`` rows into each round
    of packing (a stream cannot be packed as a whole); other columns are dropped."""
    from .streaming import column_names

    names = column_names(dataset)
    keep = [c for c in (columns or _TOKEN_COLUMNS) if c in names]

    def pack(batch: dict[str, list]) -> dict[str, list]:
        return pack_columns({k: batch[k] for k in keep}, max_length, strategy)

    return dataset.map(pack, batched=True, batch_size=rows_at_a_time, remove_columns=names)
