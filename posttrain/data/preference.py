"""Preference data: tokenizing prompt/completion pairs with truncation, and collating them into model rows.

Used by the offline preference trainers (DPO, CPO, ORPO, KTO, BCO) and, for :func:`build_rows`, by every trainer
that scores prompt + completion rows (the online trainers, GKD):

* :func:`tokenize_preference_row` validates a row, tokenizes its prompt and completion(s) separately (standard or
  conversational, implicit prompts extracted) and fits them to the length limits (:func:`fit_lengths`), raising
  :class:`~posttrain.data.DatasetFormatError` naming the row and column; :func:`report_truncation` reports what
  truncation cut and pairs that teach nothing.
* :func:`build_rows` lays ``prompt + completion`` rows out padded or padding-free with a ``completion_mask``;
  :class:`DataCollatorForPreference` puts a batch's chosen rows and then its rejected rows into *one* batch of 2B
  sequences, so the policy runs one forward pass per step; :class:`DataCollatorForUnpairedPreference` does the same
  for KTO/BCO plus the mismatched rows of the KL estimate; :class:`DataCollatorForVisionPreference` for rows with
  images.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .collators import pad_sequences, padding_free_rows, row_width
from .streaming import is_streaming
from .formats import (PREFERENCE, PREFERENCE_IMPLICIT, DatasetFormat, DatasetFormatError, detect_format, require_kind,
                      validate_example)
from .templates import extract_prompt, render_messages, require_chat_template
from .tools import check_tool_messages
from .tokenize import check_truncation_mode, row_template_kwargs, tokenize_prompt_completion, truncate
from .vision import (check_image_parts, process_images, processor_image_token, rendering, row_images,
                     template_kwargs, text_rows)

logger = logging.getLogger("posttrain")

# =============================================================================================
# data: tokenization with truncation
# =============================================================================================


TRL_1X_NAMES = {"prompt_ids": "prompt_input_ids", "chosen_ids": "chosen_input_ids", "rejected_ids": "rejected_input_ids",
                "completion_ids": "completion_input_ids"}
"""TRL 1.x's names of tokenized preference columns, and posttrain's (TRL 0.x's, which CPO/ORPO/BCO keep)."""


def ids_of(example: Mapping[str, Any], column: str) -> Any:
    """A row's token ids of ``column`` (``prompt``, ``chosen``, ...) under posttrain's name (``<column>_input_ids``)
    or TRL 1.x's (``<column>_ids``)."""
    value = example.get(f"{column}_input_ids")
    return value if value is not None else example[f"{column}_ids"]


class NoCompletionLeft(DatasetFormatError):
    """:func:`fit_lengths` with ``truncation_mode="keep_start"`` and a prompt of at least ``max_length`` tokens: no
    completion token is left to train on. Dataset preparation drops such rows (with a count); a batch cannot."""


def fit_lengths(
    prompt: list[int],
    completions: Sequence[list[int]],
    *,
    max_prompt_length: int | None,
    max_completion_length: int | None,
    max_length: int | None,
    truncation_mode: str,
    row: int | None = None,
) -> tuple[list[int], list[list[int]]]:
    """Truncate one prompt and its completion(s) as documented in :class:`PreferenceConfig`.

    The prompt stays shared by all completions (DPO compares chosen and rejected given the *same*
    prompt), so it is fitted to the longest completion.
    """
    where = f"Row {row} (0-based): " if row is not None else ""
    if not prompt:
        raise DatasetFormatError(
            f"{where}the prompt is empty after tokenization, so no token predicts the first completion token. "
            "Give every row a non-empty 'prompt' (or use a tokenizer that adds a BOS token)."
        )
    prompt = truncate(prompt, max_prompt_length, "keep_end")  # a prompt keeps its end, nearest the completion
    comps = [truncate(c, max_completion_length, "keep_start") for c in completions]
    if max_length is None:
        return prompt, comps
    longest = max(len(c) for c in comps)
    if len(prompt) + longest <= max_length:
        return prompt, comps
    if truncation_mode == "keep_end":
        prompt = truncate(prompt, max(max_length - longest, 1), "keep_end")
    elif len(prompt) >= max_length:
        raise NoCompletionLeft(
            f"{where}the prompt is {len(prompt)} tokens but max_length={max_length}, so truncation_mode='keep_start' "
            "leaves no completion token to train on. Increase max_length, set max_prompt_length below max_length, "
            "use truncation_mode='keep_end' (cuts the start of long prompts), or filter out long prompts."
        )
    return prompt, [truncate(c, max_length - len(prompt), "keep_start") for c in comps]


def _check_completion_tokens(ids: list[int], column: str, row: int) -> None:
    if not ids:
        raise DatasetFormatError(f"Row {row} (0-based), column '{column}': the completion has no tokens; every row needs a "
                                 f"non-empty '{column}'.")


def tokenize_preference_texts(
    example: Mapping[str, Any],
    row: int,
    *,
    tokenizer,
    fmt: DatasetFormat,
    eos_token_id: int | None,
    columns: Sequence[str],
    template_kwargs: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], list[int], list[list[int]]]:
    """Validate one row and tokenize its prompt and completion ``columns``, untruncated. Returns the row with an
    explicit prompt (extracted from implicit-prompt rows), the prompt's ids and each column's completion ids.
    ``template_kwargs`` (e.g. a processor's ``chat_template``) go to the chat template."""
    template_kwargs = row_template_kwargs(example, template_kwargs, row)
    if fmt.kind == PREFERENCE_IMPLICIT:
        validate_example(example, fmt, row)
        example = {**example, **extract_prompt(example, row)}
        fmt = DatasetFormat(PREFERENCE, fmt.conversational)
    validate_example(example, fmt, row)
    if fmt.conversational:
        for col in ("prompt", *columns):
            check_tool_messages(example[col], row, col)
        if not template_kwargs.get("chat_template"):
            require_chat_template(tokenizer, f"Row {row} (0-based)")
    prompt_ids = None
    comps = []
    for col in columns:
        p_ids, c_ids = tokenize_prompt_completion(tokenizer, example["prompt"], example[col], fmt.conversational,
                                                  eos_token_id, row, **template_kwargs)
        _check_completion_tokens(c_ids, col, row)
        if prompt_ids is None:
            prompt_ids = p_ids
        elif p_ids != prompt_ids:  # cannot happen with a deterministic tokenizer; guard anyway
            raise DatasetFormatError(f"Row {row} (0-based): the prompt tokenizes differently before '{columns[0]}' and '{col}'.")
        comps.append(c_ids)
    return example, prompt_ids, comps


def tokenize_preference_row(
    example: Mapping[str, Any],
    row: int,
    *,
    tokenizer,
    fmt: DatasetFormat,
    eos_token_id: int | None,
    columns: Sequence[str],
    lengths: Mapping[str, Any],
    template_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, list[int]]:
    """Validate and tokenize one row with an explicit prompt; ``columns`` are its completion columns
    (``("chosen", "rejected")`` or ``("completion",)``). Returns ``prompt_input_ids`` and
    ``<column>_input_ids`` for each column. ``template_kwargs``: the config's ``chat_template_kwargs``."""
    _, full_prompt, comps = tokenize_preference_texts(example, row, tokenizer=tokenizer, fmt=fmt,
                                                      eos_token_id=eos_token_id, columns=columns,
                                                      template_kwargs=template_kwargs)
    try:
        prompt_ids, comps = fit_lengths(full_prompt, comps, row=row, **lengths)
        left = True
    except NoCompletionLeft:  # dropped by report_truncation, with a count
        prompt_ids, comps, left = [], [[] for _ in columns], False
    out = {"prompt_input_ids": prompt_ids}
    for col, ids in zip(columns, comps):
        out[f"{col}_input_ids"] = ids
    out[PROMPT_CUT] = len(prompt_ids) < len(full_prompt)
    out[NOTHING_LEFT] = not left
    return out


PROMPT_CUT = "_prompt_truncated"
"""The column :func:`tokenize_preference_row` flags truncated prompts in; :func:`report_truncation` removes it."""
NOTHING_LEFT = "_no_completion_left"
"""The column flagging rows whose prompt fills ``max_length`` (``keep_start``): :func:`report_truncation` drops them."""


def report_truncation(dataset, split: str, args, paired: bool):
    """Warn how many prompts truncation shortened; for pairs, how many have identical chosen and rejected tokens
    (in the data, or after truncation: such a pair has no preference to learn), and refuse a split where no pair
    differs; drop the rows whose prompt left no completion token (:data:`NOTHING_LEFT`, as TRL does), with a count, and
    refuse a split left with none. Returns the dataset without those columns. A stream (data/streaming.py) is not read
    ahead: it warns at its first truncated prompt and first dropped row."""
    drop_hint = (f"max_length={args.max_length} with truncation_mode='keep_start' leaves no completion token after "
                 "a prompt that long. Increase max_length, set max_prompt_length below max_length, use "
                 "truncation_mode='keep_end' (cuts the start of long prompts), or filter out long prompts.")
    if is_streaming(dataset):
        warned = set()

        def check(row, i):
            if row.pop(PROMPT_CUT) and "cut" not in warned:
                warned.add("cut")
                logger.warning("%s prompts are being truncated (max_prompt_length=%s, max_length=%s, truncation_mode="
                               "%r): they keep only their last tokens.", split, args.max_prompt_length,
                               args.max_length, args.truncation_mode)
            if row[NOTHING_LEFT] and "drop" not in warned:
                warned.add("drop")
                logger.warning("%s dataset: rows with no completion token left are dropped (row %d). %s", split, i,
                               drop_hint)
            return row

        checked = dataset.map(check, with_indices=True, remove_columns=[PROMPT_CUT])
        return checked.filter(lambda row: not row[NOTHING_LEFT]).remove_columns(NOTHING_LEFT)
    empty = [i for i, flag in enumerate(dataset[NOTHING_LEFT]) if flag]
    if len(empty) == len(dataset):
        raise DatasetFormatError(f"No row of the {split} dataset has a completion token left: {drop_hint}")
    if empty:
        logger.warning("%s dataset: dropped %d of %d rows with no completion token left (row %d first). %s",
                       split, len(empty), len(dataset), empty[0], drop_hint)
        dataset = dataset.select(sorted(set(range(len(dataset))) - set(empty)))
    dataset = dataset.remove_columns(NOTHING_LEFT)
    n = len(dataset)
    cut = sum(dataset[PROMPT_CUT])
    if cut:
        logger.warning("%d of %d %s prompts were truncated (max_prompt_length=%s, max_length=%s, truncation_mode=%r): "
                       "they keep only their last tokens. Raise the limits if the start of the prompt matters.",
                       cut, n, split, args.max_prompt_length, args.max_length, args.truncation_mode)
    if paired:
        ties = sum(c == r for c, r in zip(dataset["chosen_input_ids"], dataset["rejected_input_ids"]))
        hint = ("Check the data (chosen == rejected) and the length limits (max_length=%s, max_completion_length=%s): "
                "truncation can cut two answers down to the same tokens." % (args.max_length, args.max_completion_length))
        if ties == n:
            raise DatasetFormatError(f"Every pair of the {split} dataset ({n}) has identical chosen and rejected "
                                     f"tokens, so there is no preference to learn. {hint}")
        if ties:
            logger.warning("%d of %d %s pairs have identical chosen and rejected tokens and teach nothing (their "
                           "gradient is 0). %s", ties, n, split, hint)
    return dataset.remove_columns(PROMPT_CUT)


# =============================================================================================
# collators
# =============================================================================================


def build_rows(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], *, pad_token_id: int,
               padding_free: bool = False, pad_to_multiple_of: int | None = None,
               flatten: bool = True, length_buckets: bool = False,
               per_sequence_cost: float | None = None,
               completion_masks: Sequence[Sequence[int]] | None = None) -> dict[str, torch.Tensor]:
    """Model inputs for ``prompt[i] + completion[i]`` rows with a 0/1 ``completion_mask``: 1 on every completion
    token, or ``completion_masks[i]`` over completion ``i``'s tokens (a multi-turn rollout's sampled tokens: the
    tokens inserted between its turns are context, never scored).

    Padded: ``input_ids``/``attention_mask``/``completion_mask`` of shape (R, L), right-padded.
    Padding-free: sequences laid end to end with ``position_ids`` restarting at 0 at each sequence start, no
    ``attention_mask``, and ``sequence_index`` (the sequence each token belongs to, -1 on padding). With
    ``flatten`` (variable-length attention kernels) all of them form one row (1, N); otherwise (sdpa/eager, whose
    masked attention costs the square of the row length) they are bin-packed, best fit decreasing, into rows no
    longer than the longest sequence, each row's end padded to the widest row.
    """
    seqs = [list(p) + list(c) for p, c in zip(prompts, completions)]
    if completion_masks is None:
        masks = [[0] * len(p) + [1] * len(c) for p, c in zip(prompts, completions)]
    else:
        masks = [[0] * len(p) + [int(bool(m)) for m in cm] for p, cm in zip(prompts, completion_masks)]
        if any(len(m) != len(s) for m, s in zip(masks, seqs)):
            raise ValueError("build_rows: each completion mask needs one entry per completion token.")
    if padding_free:
        groups, flat = padding_free_rows([len(s) for s in seqs], flatten, per_sequence_cost)
        width = row_width(max(sum(len(seqs[i]) for i in g) for g in groups), pad_to_multiple_of, length_buckets and flat)
        ids, cmask, pos, index = [], [], [], []
        for g in groups:
            row = [t for i in g for t in seqs[i]]
            extra = width - len(row)  # the row-end padding is a "sequence" of its own (positions from 0), index -1
            ids.append(row + [pad_token_id] * extra)
            cmask.append([m for i in g for m in masks[i]] + [0] * extra)
            pos.append([j for i in g for j in range(len(seqs[i]))] + list(range(extra)))
            index.append([i for i in g for _ in seqs[i]] + [-1] * extra)
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "position_ids": torch.tensor(pos, dtype=torch.long),
            "completion_mask": torch.tensor(cmask, dtype=torch.long),
            "sequence_index": torch.tensor(index, dtype=torch.long),
        }
    return {
        "input_ids": pad_sequences(seqs, pad_token_id, multiple_of=pad_to_multiple_of),
        "attention_mask": pad_sequences([[1] * len(s) for s in seqs], 0, multiple_of=pad_to_multiple_of),
        "completion_mask": pad_sequences(masks, 0, multiple_of=pad_to_multiple_of),
    }


def _float_column(examples, name):
    if name in examples[0] and examples[0][name] is not None:
        return torch.tensor([float(ex[name]) for ex in examples], dtype=torch.float32)
    return None


@dataclass
class DataCollatorForPreference:
    """Collate paired rows into one batch of 2B sequences: the B chosen rows, then the B rejected rows.

    Output: ``input_ids``, ``attention_mask`` (padded) or ``position_ids`` (padding-free),
    ``completion_mask``, and ``ref_chosen_logps``/``ref_rejected_logps`` when the rows carry them.
    """

    pad_token_id: int
    padding_free: bool = False
    pad_to_multiple_of: int | None = None
    flatten: bool = True  # padding-free: one row (variable-length kernels) or bin-packed rows (sdpa/eager)
    length_buckets: bool = False  # padding-free: one-row widths in data.collators.row_width's buckets
    per_sequence_cost: float | None = None  # padding-free: one row or bin-packed, per batch (padding_free_rows)

    def __call__(self, examples: list[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        prompts = [ids_of(ex, "prompt") for ex in examples]
        completions = [ids_of(ex, "chosen") for ex in examples] + [ids_of(ex, "rejected") for ex in examples]
        batch = build_rows(prompts + prompts, completions, pad_token_id=self.pad_token_id,
                           padding_free=self.padding_free, pad_to_multiple_of=self.pad_to_multiple_of,
                           flatten=self.flatten, length_buckets=self.length_buckets,
                           per_sequence_cost=self.per_sequence_cost)
        for name in ("ref_chosen_logps", "ref_rejected_logps"):
            col = _float_column(examples, name)
            if col is not None:
                batch[name] = col
        return batch


@dataclass
class DataCollatorForVisionPreference:
    """Collate raw paired rows with images into one padded batch of 2B sequences (the B chosen rows, then the B
    rejected rows), like :class:`DataCollatorForPreference`, plus what the processor returns for the images.

    Rows: TRL's vision preference layout, an ``images`` (or ``image``) column beside ``prompt``/``chosen``/
    ``rejected`` (or implicit-prompt ``chosen``/``rejected``), standard (the processor's image token in the prompt)
    or conversational (``{"type": "image"}`` parts in the prompt's messages). Each row's text is tokenized as for
    text-only DPO (one image token per image); the processor then reads each prompt with its images **once**
    (:func:`~posttrain.data.vision.process_images`: image tokens expanded, ``pixel_values``, ...), and the chosen and
    rejected rows are built on the expanded prompt. The processor's image outputs are repeated for the two halves;
    its per-token outputs (e.g. ``token_type_ids``) follow the prompt's tokens (0 on completions and padding).
    Image tokens are never in ``completion_mask``.

    Truncation never cuts an image token: ``max_prompt_length`` counts the prompt's text tokens and cuts text before
    the first image only; ``max_length`` (``truncation_mode``) applies to the expanded rows as in
    :func:`fit_lengths`. A row that cannot fit without cutting an image is a ValueError naming the example.
    """

    processor: Any
    max_length: int | None = None
    max_prompt_length: int | None = None
    max_completion_length: int | None = None
    truncation_mode: str = "keep_end"
    pad_to_multiple_of: int | None = None
    padding_value: int | None = None
    eos_token_id: int | None = None
    padding_free: bool = field(default=False, init=False)  # vision batches are always padded
    tokenizer: Any = field(init=False, repr=False)
    image_token: str = field(init=False)
    image_token_id: int = field(init=False)

    def __post_init__(self):
        self.image_token, self.image_token_id = processor_image_token(self.processor, type(self).__name__)
        check_truncation_mode(self.truncation_mode)
        self.tokenizer = self.processor.tokenizer
        if self.padding_value is None:
            self.padding_value = self.tokenizer.pad_token_id
        if self.eos_token_id is None:
            self.eos_token_id = self.tokenizer.eos_token_id

    # -- rows -----------------------------------------------------------------------------------
    @staticmethod
    def format_of(example: Mapping[str, Any]) -> DatasetFormat:
        fmt = detect_format(example.keys(), example)
        require_kind(fmt, (PREFERENCE, PREFERENCE_IMPLICIT), "Vision preference training")
        return fmt

    def text_row(self, example: Mapping[str, Any], fmt: DatasetFormat, row: int):
        """``(row with an explicit prompt, prompt text for the processor, prompt ids, [chosen ids, rejected ids])``,
        the ids with one image token per image; raises :class:`DatasetFormatError` naming ``row``."""
        kwargs = template_kwargs(self.processor, fmt.conversational)
        with rendering(row, fmt.conversational):
            example, prompt_ids, comps = tokenize_preference_texts(
                example, row, tokenizer=self.tokenizer, fmt=fmt, eos_token_id=self.eos_token_id,
                columns=("chosen", "rejected"), template_kwargs=kwargs)
            text = (render_messages(self.tokenizer, example["prompt"], add_generation_prompt=True, **kwargs)
                    if fmt.conversational else example["prompt"])
        return example, text, prompt_ids, comps

    def check_images(self, example: Mapping[str, Any], conversational: bool, num_images: int, row: int,
                     column: str = "images") -> None:
        """The prompt's image placeholders match the row's images; the completions have none."""
        check_image_parts(example, row, num_images, image_token=self.image_token, conversational=conversational,
                          key="prompt", image_free=("chosen", "rejected"), column=column)

    def validate(self, dataset, split: str = "train") -> None:
        """Check every row before training (format, text, image placeholders against images); errors name the
        row. No image is decoded."""
        fmt = None
        for row, example, count, column in text_rows(dataset, split):
            fmt = fmt or self.format_of(example)
            explicit = self.text_row(example, fmt, row)[0]
            self.check_images(explicit, fmt.conversational, count, row, column)

    # -- batches --------------------------------------------------------------------------------
    def __call__(self, examples: list[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        fmt = self.format_of(examples[0])
        rows = [self.text_row(ex, fmt, i) for i, ex in enumerate(examples)]
        images = [row_images(ex) for ex in examples]
        for i, (row, imgs) in enumerate(zip(rows, images)):
            self.check_images(row[0], fmt.conversational, len(imgs), i)
        proc = process_images(self.processor, [r[1] for r in rows], images, [r[2] for r in rows],
                              [r[2] for r in rows], self.image_token_id, add_special_tokens=not fmt.conversational)
        prompts, chosen, rejected, kept = [], [], [], []
        for i, row in enumerate(rows):
            if proc.used[i] != len(row[2]):
                raise ValueError(f"Example {i} of the batch: the processor's tokens cover {proc.used[i]} of the "
                                 f"prompt's {len(row[2])} tokens; it must tokenize the prompt as its tokenizer does.")
            prompt, (c, r) = self.fit(proc.ids[i], row[3], i, proc.media[i])
            prompts.append(prompt)
            chosen.append(c)
            rejected.append(r)
            kept.append(len(prompt))
        batch = build_rows(prompts + prompts, chosen + rejected, pad_token_id=self.padding_value,
                           pad_to_multiple_of=self.pad_to_multiple_of)
        batch["completion_mask"][batch["input_ids"] == self.image_token_id] = 0
        width = batch["input_ids"].shape[1]
        for key, per_row in proc.per_token.items():  # along the (truncated) prompts, 0 on completions and padding
            values = [per_row[i][len(per_row[i]) - kept[i]:] for i in range(len(rows))]
            values = [v + [0] * len(c) for v, c in zip(values + values, chosen + rejected)]
            batch[key] = pad_sequences([v + [0] * (width - len(v)) for v in values], 0)
        for key, value in proc.extras.items():  # per image (or per row), in row order: once per half
            batch[key] = torch.cat([value, value]) if torch.is_tensor(value) and value.dim() > 0 else value
        for name in ("ref_chosen_logps", "ref_rejected_logps"):
            col = _float_column(examples, name)
            if col is not None:
                batch[name] = col
        return batch

    def fit(self, prompt: list[int], completions: list[list[int]], example: int, media: list[bool] | None = None):
        """Truncate one expanded prompt and its completions (see the class docstring), never through an image
        (``media``: True on the prompt's image tokens and the tokens its processor wrote around them; default: the
        image token's)."""
        if media is None:
            media = [t == self.image_token_id for t in prompt]
        images = sum(media)
        if self.max_prompt_length is not None:
            excess = len(prompt) - images - self.max_prompt_length  # text tokens over the limit
            if excess > 0:
                first = media.index(True) if images else len(prompt)
                if excess > first:
                    raise ValueError(
                        f"Example {example} of the batch: the prompt has {len(prompt) - images} text tokens, and "
                        f"max_prompt_length={self.max_prompt_length} would cut text after its first image; images and "
                        "the text between them cannot be cut. Use a larger max_prompt_length or shorter prompts.")
                prompt, media = prompt[excess:], media[excess:]
        try:
            prompt, completions = fit_lengths(prompt, completions, max_prompt_length=None,
                                              max_completion_length=self.max_completion_length,
                                              max_length=self.max_length, truncation_mode=self.truncation_mode)
        except DatasetFormatError as err:
            raise DatasetFormatError(f"Example {example} of the batch: {err}") from None
        if sum(media[len(media) - len(prompt):]) != images:  # the prompt is cut from its start, if at all
            raise ValueError(
                f"Example {example} of the batch: its prompt is {len(prompt)} tokens ({images} image tokens), and "
                f"max_length={self.max_length} (truncation_mode='{self.truncation_mode}') would cut its image "
                "tokens; images cannot be cut. Use a larger max_length, smaller or fewer images, or "
                "truncation_mode='keep_start' (which cuts the completions' ends).")
        return prompt, completions


@dataclass
class DataCollatorForUnpairedPreference:
    """Collate unpaired rows (KTO, BCO): ``input_ids``/``completion_mask``/... for the B rows, ``label``,
    and with ``kl_rows=True`` the same keys prefixed ``kl_`` for B *mismatched* rows (prompt i with the
    completion of row i+1 of the batch, or the row's fixed ``kl_completion_input_ids`` when present).
    """

    pad_token_id: int
    padding_free: bool = False
    pad_to_multiple_of: int | None = None
    kl_rows: bool = True
    flatten: bool = True  # padding-free: one row (variable-length kernels) or bin-packed rows (sdpa/eager)
    length_buckets: bool = False  # padding-free: one-row widths in data.collators.row_width's buckets
    per_sequence_cost: float | None = None  # padding-free: one row or bin-packed, per batch (padding_free_rows)

    def __call__(self, examples: list[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        prompts = [ids_of(ex, "prompt") for ex in examples]
        comps = [ids_of(ex, "completion") for ex in examples]
        kw = dict(pad_token_id=self.pad_token_id, padding_free=self.padding_free, pad_to_multiple_of=self.pad_to_multiple_of,
                  flatten=self.flatten, length_buckets=self.length_buckets, per_sequence_cost=self.per_sequence_cost)
        batch = build_rows(prompts, comps, **kw)
        batch["label"] = torch.tensor([bool(ex["label"]) for ex in examples], dtype=torch.bool)
        if self.kl_rows:
            if "kl_completion_input_ids" in examples[0]:
                kl_comps = [ex["kl_completion_input_ids"] for ex in examples]
            else:
                kl_comps = comps[1:] + comps[:1]
            for k, v in build_rows(prompts, kl_comps, **kw).items():
                batch[f"kl_{k}"] = v
        for name in ("reference_logps", "reference_KL_logps"):
            col = _float_column(examples, name)
            if col is not None:
                batch[name] = col
        return batch


def kl_rows(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``kl_``-prefixed model inputs of an unpaired batch, without the prefix."""
    return {k[3:]: v for k, v in batch.items() if k.startswith("kl_")}


def concat_rows(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stack two sets of :func:`build_rows` inputs into one (the rows of ``a``, then those of ``b``)."""
    if "position_ids" in a:  # padding-free
        b = dict(b, sequence_index=torch.where(b["sequence_index"] >= 0, b["sequence_index"] + int(a["sequence_index"].max()) + 1, -1))
        keys = ("input_ids", "position_ids", "completion_mask", "sequence_index")
        if a["input_ids"].shape[0] == 1 and b["input_ids"].shape[0] == 1:  # one long row each: one longer row
            return {k: torch.cat([a[k], b[k]], dim=1) for k in keys}
        width = max(a["input_ids"].shape[1], b["input_ids"].shape[1])

        def widen(rows):
            extra = width - rows["input_ids"].shape[1]
            n = rows["input_ids"].shape[0]
            return {"input_ids": torch.nn.functional.pad(rows["input_ids"], (0, extra), value=0),
                    "position_ids": torch.cat([rows["position_ids"], torch.arange(extra).expand(n, extra)], dim=1),
                    "completion_mask": torch.nn.functional.pad(rows["completion_mask"], (0, extra), value=0),
                    "sequence_index": torch.nn.functional.pad(rows["sequence_index"], (0, extra), value=-1)}

        a, b = widen(a), widen(b)
        return {k: torch.cat([a[k], b[k]], dim=0) for k in keys}
    width = max(a["input_ids"].shape[1], b["input_ids"].shape[1])
    out = {}
    for k in ("input_ids", "attention_mask", "completion_mask"):
        x, y = a[k], b[k]
        x = torch.nn.functional.pad(x, (0, width - x.shape[1]), value=0)
        y = torch.nn.functional.pad(y, (0, width - y.shape[1]), value=0)
        out[k] = torch.cat([x, y], dim=0)
    return out


__all__ = [
    "fit_lengths", "tokenize_preference_texts", "tokenize_preference_row", "PROMPT_CUT", "report_truncation",
    "build_rows", "DataCollatorForPreference", "DataCollatorForVisionPreference", "DataCollatorForUnpairedPreference",
    "kl_rows", "concat_rows",
]
