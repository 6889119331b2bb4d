"""Batch collators.

:class:`DataCollatorForLanguageModeling` builds either

* a **padded** batch — ``input_ids``/``attention_mask``/``labels`` of shape (B, L), right-padded; or
* a **padding-free** batch — sequences laid end to end with ``position_ids`` that restart at 0 at each
  sequence start and no ``attention_mask``. transformers turns restarting ``position_ids`` into a
  block-diagonal causal mask (and flash-attention kernels use them as sequence boundaries), so no token
  attends across sequences. With ``flatten=True`` (right for variable-length flash attention) the whole
  batch becomes one row (1, N) and no compute is spent on padding; with ``flatten=False`` (right for
  sdpa/eager, whose masked attention costs the square of the row length) the batch's examples (or packed
  rows) are bin-packed, best fit decreasing, into as few rows as hold them without making any row longer
  than the batch's longest example: the same examples and tokens as the padded batch, no row longer,
  fewer rows (on log-normal chat lengths, batch 8: ~6 rows, 86% real tokens against 65% padded).

``labels`` are a row's own ``labels`` when it has them (the SFT trainer's prepared rows), else its ``input_ids`` with
``-100`` on tokens the loss skips (prompt tokens under completion-only loss, non-assistant tokens under assistant-only
loss); ``-100`` on padding and, in padding-free batches, on the first token of every sequence (so the shifted loss
never predicts one sequence's first token from the previous sequence).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .packing import rows_within_longest

IGNORE_INDEX = -100


def _concat(rows: Sequence[tuple[list[int], list[int], list[int]]]) -> tuple[list[int], list[int], list[int]]:
    """(ids, labels, positions) rows laid end to end into one."""
    return tuple([x for r in rows for x in r[k]] for k in range(3))


def pad_sequences(seqs: Sequence[Sequence[int]], value: int, side: str = "right", multiple_of: int | None = None) -> torch.Tensor:
    """Stack variable-length int sequences into a (B, L) tensor, padding on ``side``."""
    length = max((len(s) for s in seqs), default=0)
    if multiple_of:
        length = -(-length // multiple_of) * multiple_of
    out = torch.full((len(seqs), length), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s) == 0:
            continue
        t = torch.as_tensor(s, dtype=torch.long)
        if side == "right":
            out[i, : len(s)] = t
        else:
            out[i, length - len(s):] = t
    return out


def row_width(length: int, multiple_of: int | None = None, buckets: bool = False) -> int:
    """The width to pad a batch's rows of at most ``length`` tokens to: a multiple of ``multiple_of`` when given; with
    ``buckets``, a multiple of 1/8 of the largest power of two not above ``length`` (at least 64), which allows 8
    widths per doubling and pads about 3% on average. Fewer distinct widths let the CPU allocator and kernel caches
    reuse what earlier steps allocated, where every new width would otherwise leave memory behind
    (``docs/performance.md``, "Attention per sequence")."""
    step = multiple_of or (max(64, 1 << max(length.bit_length() - 4, 0)) if buckets else 1)
    return -(-length // step) * step


def padding_free_rows(lengths: Sequence[int], flatten: bool, per_sequence_cost: float | None = None,
                      sequences: int | None = None) -> tuple[list[list[int]], bool]:
    """How a padding-free batch of examples with these token ``lengths`` is laid out: the examples' indices grouped
    into rows, and whether that is the one flat row. ``flatten``: one row (variable-length kernels), else rows
    bin-packed within the longest (sdpa/eager). With a ``per_sequence_cost`` (per-sequence attention: the cost of a
    sequence's extra attention calls, in positions' work) the batch is one row only where the positions that saves
    over the bin-packed rows exceed that cost for its ``sequences`` (default: one per example)."""
    everything = [list(range(len(lengths)))]
    if flatten and per_sequence_cost is None:
        return everything, True
    groups = rows_within_longest(lengths)
    if not flatten:
        return groups, False
    saved = len(groups) * max(lengths, default=0) - row_width(sum(lengths), buckets=True)
    if saved > per_sequence_cost * (sequences if sequences is not None else len(lengths)):
        return everything, True
    return groups, False


def label_ids(example: Mapping[str, Any], completion_only_loss: bool) -> list[int]:
    """A row's labels: its ``labels`` as given (never re-masked), else its ``input_ids`` with ``-100`` on the tokens
    its masks leave out (``completion_mask`` under completion-only loss, ``assistant_masks``)."""
    if example.get("labels") is not None:
        return list(example["labels"])
    ids = list(example["input_ids"])
    keep = [1] * len(ids)
    if completion_only_loss and "completion_mask" in example:
        keep = [k & int(m) for k, m in zip(keep, example["completion_mask"])]
    if "assistant_masks" in example:
        keep = [k & int(m) for k, m in zip(keep, example["assistant_masks"])]
    return [t if k else IGNORE_INDEX for t, k in zip(ids, keep)]


@dataclass
class DataCollatorForLanguageModeling:
    """Collate tokenized (optionally packed) LM examples; see the module docstring."""

    pad_token_id: int
    completion_only_loss: bool = True
    padding_free: bool = False
    pad_to_multiple_of: int | None = None
    flatten: bool = True
    length_buckets: bool = False
    """Padding-free: pad one-row batches to :func:`row_width`'s buckets (set by trainers running per-sequence
    attention)."""
    per_sequence_cost: float | None = None
    """Padding-free with ``flatten``: choose per batch between one row and bin-packed rows
    (:func:`padding_free_rows`)."""
    return_num_real_tokens: bool = False
    """Padding-free batches also carry ``num_real_tokens`` (the tokens before the row-end padding), for a trainer
    that counts them; not a model input."""
    mask_first_label: bool = False
    """Padded batches: ``-100`` as every row's first label too. A causal LM's loss never predicts it (labels are
    shifted), so it changes no loss; the SFT trainer sets it so that every transformers version counts the loss
    tokens alike (some count ``labels`` unshifted). TRL's collator keeps it, and so does this one by default."""

    def __call__(self, examples: list[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if self.padding_free or any("seq_lengths" in ex for ex in examples):
            return self._padding_free(examples)
        ids = [list(ex["input_ids"]) for ex in examples]
        labels = []
        for ex in examples:
            lab = label_ids(ex, self.completion_only_loss)
            if lab and self.mask_first_label:
                lab[0] = IGNORE_INDEX
            labels.append(lab)
        input_ids = pad_sequences(ids, self.pad_token_id, multiple_of=self.pad_to_multiple_of)
        attention_mask = pad_sequences([[1] * len(s) for s in ids], 0, multiple_of=self.pad_to_multiple_of)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": pad_sequences(labels, IGNORE_INDEX, multiple_of=self.pad_to_multiple_of),
        }

    def _padding_free(self, examples: list[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        rows = [self._row(ex) for ex in examples]
        groups, flat = padding_free_rows([len(r[0]) for r in rows], self.flatten, self.per_sequence_cost,
                                         sum(len(ex.get("seq_lengths") or [1]) for ex in examples))
        rows = [_concat([rows[i] for i in group]) for group in groups]
        length = row_width(max(len(r[0]) for r in rows), self.pad_to_multiple_of, self.length_buckets and flat)
        ids, labels, positions = [], [], []
        for row_ids, row_labels, row_pos in rows:
            extra = length - len(row_ids)  # padding at the row end forms its own "sequence" (positions 0..extra-1)
            ids.append(row_ids + [self.pad_token_id] * extra)
            labels.append(row_labels + [IGNORE_INDEX] * extra)
            positions.append(row_pos + list(range(extra)))
        batch = {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "position_ids": torch.tensor(positions, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
        }
        if self.return_num_real_tokens:
            batch["num_real_tokens"] = torch.tensor(sum(len(r[0]) for r in rows))
        return batch

    @staticmethod
    def get_position_ids_from_packed_seq_lengths(batch_seq_lengths: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """Each example's ``position_ids`` from the lengths of the sequences packed into it (restarting at 0)."""
        return [torch.cat([torch.arange(n) for n in lengths]) if len(lengths) else torch.zeros(0, dtype=torch.long)
                for lengths in batch_seq_lengths]

    def _row(self, ex: Mapping[str, Any]) -> tuple[list[int], list[int], list[int]]:
        """One example (or packed row): ids, labels with the first token of each sequence ignored, positions."""
        ex_ids = list(ex["input_ids"])
        ex_labels = label_ids(ex, self.completion_only_loss)
        labels, positions, start = [], [], 0
        for n in ex.get("seq_lengths") or [len(ex_ids)]:
            if n <= 0:
                continue
            seg = ex_labels[start : start + n]
            seg[0] = IGNORE_INDEX
            labels.extend(seg)
            positions.extend(range(n))
            start += n
        return ex_ids[:start], labels, positions
