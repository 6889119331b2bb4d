"""The shared core of the offline preference trainers (DPO, CPO, ORPO, KTO, BCO).

Everything these trainers have in common lives here, once:

* **Configuration** — :class:`PreferenceConfig` (lengths, truncation, padding-free, ``beta``) and
  :class:`ReferenceConfig` (how the reference policy is obtained: separate model, PEFT adapter
  disabled, precomputed log-probs, TR-DPO syncing).
* **Data** — :meth:`PreferenceTrainer.prepare_dataset` detects the format, extracts implicit
  prompts, tokenizes prompt and completions separately (standard or conversational) and truncates
  them (see :func:`fit_lengths`), raising :class:`~posttrain.data.DatasetFormatError` naming the row
  and column for bad rows. Paired trainers keep ``prompt_input_ids``/``chosen_input_ids``/
  ``rejected_input_ids``; unpaired trainers (KTO, BCO) keep ``prompt_input_ids``/
  ``completion_input_ids``/``label`` and unpair paired data with
  :func:`~posttrain.data.unpair_preference`.
* **Collators** — :class:`DataCollatorForPreference` puts the chosen rows and then the rejected rows of a
  batch into *one* batch of 2B sequences (padded, or padding-free as one row with restarting
  ``position_ids``), so the policy runs **one** forward pass per step;
  :class:`DataCollatorForUnpairedPreference` does the same for KTO/BCO plus the mismatched rows of the
  KL estimate.
* **Log-probs** — :func:`completion_logps` runs a model with its output head restricted to the
  positions that predict a completion token (``select_head_positions``), so no (B, L, V) logits or
  full-vocabulary ``log_softmax`` are ever built, and returns per-sequence summed and mean log-probs.
* **Reference policy** — :meth:`PreferenceTrainer.reference_logps`: a frozen model, the policy with
  its adapter disabled, or (before training) the policy itself; always under ``torch.no_grad()`` in
  eval mode. Precomputed reference log-probs are stored as dataset columns and cached in a file keyed
  by the dataset content, in ``output_dir`` and in every checkpoint, so a resumed run reuses them.
* **Metrics** — TRL's names (``rewards/chosen``, ``logps/rejected``, ...), averaged across steps and
  processes by :meth:`BaseTrainer.log`.

A trainer subclass only implements ``_compute_loss`` with a loss from :mod:`posttrain.losses.preference`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import TrainerCallback

from ..data import DatasetFormatError, detect_format, pad_sequences, require_kind, validate_example
from ..data.formats import PREFERENCE, PREFERENCE_IMPLICIT, UNPAIRED_PREFERENCE, DatasetFormat
from ..data.collators import padding_free_rows, row_width
from ..data.templates import extract_prompt, render_messages, require_chat_template, unpair_preference
from ..data.tokenize import TRUNCATION_MODES, tokenize_prompt_completion
from ..data.vision import (check_image_parts, has_image_processor, image_column, padded_only_error,
                           process_images, processor_image_token, rendering, row_images, template_kwargs, text_rows)
from ..losses.policy import entropy_from_logits
from ..losses.preference import RunningMean
from ..models import disable_dropout, is_vision_model, load_pretrained, select_head_positions, unwrap
from ..models.sharding import frozen_copy, is_zero3_partitioned
from .base import BaseTrainer, PosttrainConfig, check_choice, require_positive

logger = logging.getLogger("posttrain")

REFERENCE_CACHE_PREFIX = "reference_logps-"
EXTRA_STATE_NAME = "preference_state.json"
REF_MODEL_STATE_NAME = "ref_model.safetensors"


# =============================================================================================
# configuration
# =============================================================================================


@dataclass
class PreferenceConfig(PosttrainConfig):
    """Options every preference trainer shares (TRL's names).

    Lengths are in tokens. Truncation, in this order: the prompt keeps its last ``max_prompt_length``
    tokens; each completion keeps its first ``max_completion_length`` tokens; then, if prompt plus the
    longer completion exceeds ``max_length``, ``truncation_mode="keep_end"`` drops tokens from the
    *start of the prompt* (at least one prompt token stays; completions that still do not fit lose
    their end) and ``truncation_mode="keep_start"`` drops tokens from the *end of the completions*
    (a prompt of ``max_length`` tokens or more is then an error naming the row).
    """

    learning_rate: float = field(default=1e-6, metadata={"help": "Initial AdamW learning rate."})
    beta: float = field(default=0.1, metadata={"help": "Temperature of the loss (strength of the implicit KL penalty)."})
    max_length: int | None = field(default=1024, metadata={"help": "Maximum tokens of prompt + completion."})
    max_prompt_length: int | None = field(default=512, metadata={"help": "Maximum prompt tokens (the prompt keeps its end)."})
    max_completion_length: int | None = field(default=None, metadata={"help": "Maximum completion tokens (completions keep their start)."})
    truncation_mode: str = field(
        default="keep_end",
        metadata={"help": "When prompt + completion > max_length: 'keep_end' cuts the prompt's start, "
                  "'keep_start' cuts the completions' end.", "choices": list(TRUNCATION_MODES)},
    )
    padding_free: bool | None = field(default=None, metadata={"help": "Batches without padding: sequences laid end to end with restarting position_ids (flash attention: one row; sdpa/eager: bin-packed into rows no longer than the longest sequence). Default: on when the model supports it (the padded batch's log-probs, less compute)."})
    pad_to_multiple_of: int | None = field(default=None, metadata={"help": "Pad sequence length to a multiple of this."})
    padding_value: int | None = field(default=None, metadata={"help": "Padding token id (default: the tokenizer's pad token)."})
    dataset_num_proc: int | None = field(default=None, metadata={"help": "Processes for dataset preparation."})
    disable_dropout: bool = field(default=True, metadata={"help": "Set every dropout probability of the model(s) to 0."})
    chat_template_path: str | None = field(default=None, metadata={"help": "Tokenizer folder or .jinja file whose chat template to use."})
    use_logits_to_keep: bool = field(
        default=False,
        metadata={"help": "Accepted for TRL compatibility. posttrain always projects only completion positions "
                  "through the output head, which saves more than logits_to_keep."},
    )

    def __post_init__(self):
        check_choice("truncation_mode", self.truncation_mode, TRUNCATION_MODES)
        require_positive(self, "max_length", "max_prompt_length", "max_completion_length")
        if self.max_length is not None and self.max_length < 2:
            raise ValueError("max_length must leave room for at least one prompt and one completion token (>= 2).")
        super().__post_init__()


@dataclass
class ReferenceConfig(PreferenceConfig):
    """Options of the trainers that compare the policy to a reference policy (DPO, KTO, BCO)."""

    ref_model_init_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": "Keyword arguments for `from_pretrained` when ref_model is a name or path (JSON string)."},
    )
    precompute_ref_log_probs: bool = field(
        default=False,
        metadata={"help": "Compute the reference log-probs once before training, store them as dataset columns and "
                  "cache them in output_dir (and checkpoints); no reference model stays in memory."},
    )
    precompute_ref_batch_size: int | None = field(
        default=None, metadata={"help": "Batch size of the precomputation (default: per_device_eval_batch_size)."}
    )
    sync_ref_model: bool = field(
        default=False,
        metadata={"help": "TR-DPO: every ref_model_sync_steps steps set ref = alpha * policy + (1 - alpha) * ref."},
    )
    ref_model_mixup_alpha: float = field(default=0.6, metadata={"help": "alpha of sync_ref_model."})
    ref_model_sync_steps: int = field(default=512, metadata={"help": "Steps between reference syncs."})

    def __post_init__(self):
        if isinstance(self.ref_model_init_kwargs, str):
            self.ref_model_init_kwargs = json.loads(self.ref_model_init_kwargs)
        if self.sync_ref_model and self.precompute_ref_log_probs:
            raise ValueError("sync_ref_model=True needs a reference model in memory; it cannot be combined with "
                             "precompute_ref_log_probs=True.")
        if not 0.0 <= self.ref_model_mixup_alpha <= 1.0:
            raise ValueError(f"ref_model_mixup_alpha must be in [0, 1], got {self.ref_model_mixup_alpha}.")
        if self.ref_model_sync_steps < 1:
            raise ValueError(f"ref_model_sync_steps must be >= 1, got {self.ref_model_sync_steps}.")
        if not self.beta > 0:  # 0 trains nothing (or divides by zero: ipo), < 0 reverses the preference
            raise ValueError(f"beta must be > 0, got {self.beta}: it scales the log-ratio to the reference; 0 makes "
                             "every pair's loss constant, and a negative beta trains the rejected answers up.")
        super().__post_init__()


# =============================================================================================
# data: tokenization with truncation
# =============================================================================================


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
    if max_prompt_length is not None and len(prompt) > max_prompt_length:
        prompt = prompt[-max_prompt_length:]
    comps = [list(c) if max_completion_length is None else list(c)[:max_completion_length] for c in completions]
    if max_length is None:
        return prompt, comps
    longest = max(len(c) for c in comps)
    if len(prompt) + longest <= max_length:
        return prompt, comps
    if truncation_mode == "keep_end":
        keep = max(max_length - longest, 1)
        prompt = prompt[-keep:]
    elif len(prompt) >= max_length:
        raise DatasetFormatError(
            f"{where}the prompt is {len(prompt)} tokens but max_length={max_length}, so truncation_mode='keep_start' "
            "leaves no completion token to train on. Increase max_length, set max_prompt_length below max_length, "
            "use truncation_mode='keep_end' (cuts the start of long prompts), or filter out long prompts."
        )
    room = max_length - len(prompt)
    return prompt, [c[:room] for c in comps]


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
    template_kwargs = dict(template_kwargs or {})
    if fmt.kind == PREFERENCE_IMPLICIT:
        validate_example(example, fmt, row)
        example = {**example, **extract_prompt(example, row)}
        fmt = DatasetFormat(PREFERENCE, fmt.conversational)
    validate_example(example, fmt, row)
    if fmt.conversational and not template_kwargs.get("chat_template"):
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
) -> dict[str, list[int]]:
    """Validate and tokenize one row with an explicit prompt; ``columns`` are its completion columns
    (``("chosen", "rejected")`` or ``("completion",)``). Returns ``prompt_input_ids`` and
    ``<column>_input_ids`` for each column."""
    _, full_prompt, comps = tokenize_preference_texts(example, row, tokenizer=tokenizer, fmt=fmt,
                                                      eos_token_id=eos_token_id, columns=columns)
    prompt_ids, comps = fit_lengths(full_prompt, comps, row=row, **lengths)
    out = {"prompt_input_ids": prompt_ids}
    for col, ids in zip(columns, comps):
        out[f"{col}_input_ids"] = ids
    out[PROMPT_CUT] = len(prompt_ids) < len(full_prompt)
    return out


PROMPT_CUT = "_prompt_truncated"
"""The column :func:`tokenize_preference_row` flags truncated prompts in; :func:`report_truncation` removes it."""


def report_truncation(dataset, split: str, args, paired: bool):
    """Warn how many prompts truncation shortened; for pairs, how many have identical chosen and rejected tokens
    (in the data, or after truncation: such a pair has no preference to learn), and refuse a split where no pair
    differs. Returns the dataset without the :data:`PROMPT_CUT` column."""
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
               per_sequence_cost: float | None = None) -> dict[str, torch.Tensor]:
    """Model inputs for ``prompt[i] + completion[i]`` rows with a 0/1 ``completion_mask``.

    Padded: ``input_ids``/``attention_mask``/``completion_mask`` of shape (R, L), right-padded.
    Padding-free: sequences laid end to end with ``position_ids`` restarting at 0 at each sequence start, no
    ``attention_mask``, and ``sequence_index`` (the sequence each token belongs to, -1 on padding). With
    ``flatten`` (variable-length attention kernels) all of them form one row (1, N); otherwise (sdpa/eager, whose
    masked attention costs the square of the row length) they are bin-packed, best fit decreasing, into rows no
    longer than the longest sequence, each row's end padded to the widest row.
    """
    seqs = [list(p) + list(c) for p, c in zip(prompts, completions)]
    masks = [[0] * len(p) + [1] * len(c) for p, c in zip(prompts, completions)]
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


def _no_padding_free(what: str) -> ValueError:
    return padded_only_error("padding_free=True", what, "Leave padding_free unset (padded batches).")


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
        prompts = [ex["prompt_input_ids"] for ex in examples]
        completions = [ex["chosen_input_ids"] for ex in examples] + [ex["rejected_input_ids"] for ex in examples]
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
        check_choice("truncation_mode", self.truncation_mode, TRUNCATION_MODES)
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
        prompts = [ex["prompt_input_ids"] for ex in examples]
        comps = [ex["completion_input_ids"] for ex in examples]
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


# =============================================================================================
# log-probs of completions
# =============================================================================================


@dataclass
class SequenceLogps:
    """Per-sequence log-probs of the completion tokens of R rows.

    ``sum`` (R,) summed log-probs (with grad when the forward had it); ``count`` (R,) completion tokens;
    ``mean_logits`` (R,) detached mean of the logits over completion tokens and vocabulary;
    ``token_logps`` (N,) and ``token_seq`` (N,) the per-token log-probs and their row index (row-major);
    ``log_sum_sq_probs`` (N,) ``log Σ_v p_v²`` per token when requested (WPO).
    """

    sum: torch.Tensor
    count: torch.Tensor
    mean_logits: torch.Tensor
    token_logps: torch.Tensor
    token_seq: torch.Tensor
    log_sum_sq_probs: torch.Tensor | None = None
    token_entropy: torch.Tensor | None = None
    """(N,) detached entropy of the policy's next-token distribution at each completion token (``with_token_stats``)."""
    token_top1: torch.Tensor | None = None
    """(N,) whether each completion token is the argmax of its logits (``with_token_stats``)."""

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / self.count.clamp(min=1)

    def per_token(self, values: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``values`` (default: ``token_logps``) as an (R, T) matrix and its 0/1 mask."""
        values = self.token_logps if values is None else values
        rows = self.sum.shape[0]
        counts = torch.bincount(self.token_seq, minlength=rows)
        width = int(counts.max()) if counts.numel() else 0
        starts = torch.cumsum(counts, 0) - counts
        pos = torch.arange(self.token_seq.numel(), device=values.device) - starts[self.token_seq]
        out = values.new_zeros(rows, width)
        out = out.index_put((self.token_seq, pos), values)
        mask = torch.zeros(rows, width, dtype=torch.bool, device=values.device)
        mask[self.token_seq, pos] = True
        return out, mask

    def select(self, rows: slice) -> torch.Tensor:
        """Token mask (N,) of the tokens belonging to ``rows``."""
        start, stop = rows.start or 0, rows.stop if rows.stop is not None else self.sum.shape[0]
        return (self.token_seq >= start) & (self.token_seq < stop)


def sequence_sums(values: torch.Tensor, token_seq: torch.Tensor, num_rows: int) -> torch.Tensor:
    """Per-sequence sums (num_rows,) of the per-token ``values`` (N,) whose sequence index is ``token_seq``.

    Accumulated in float64 (then cast back): ``index_add`` adds one token after another, so a float32 sum of a
    thousand log-probs near -1 drifts by ~1e-3, which KTO's KL estimate and DPO's implicit rewards (differences of
    two such sums) would carry. MPS has no float64 and keeps float32.
    """
    acc = torch.float32 if values.device.type == "mps" else torch.float64
    return values.new_zeros(num_rows, dtype=acc).index_add(0, token_seq, values.to(acc)).to(values.dtype)


ROW_KEYS = ("input_ids", "attention_mask", "position_ids", "completion_mask", "sequence_index")
"""The keys of :func:`build_rows`; any other key of a row batch is an input of the model (images)."""


def completion_logps(model, rows: Mapping[str, torch.Tensor], *, with_log_sum_sq_probs: bool = False,
                     with_token_stats: bool = False) -> SequenceLogps:
    """Run ``model`` on ``rows`` (from :func:`build_rows`, plus a vision-language model's image inputs) and gather
    the completion log-probs.

    The output head projects only the positions whose next token is a completion token, and the
    log-probs are ``logit[target] - logsumexp(logits)`` in float32, so neither the (R, L, V) logits nor a
    full-vocabulary ``log_softmax`` tensor is ever materialised.
    """
    input_ids = rows["input_ids"]
    cmask = rows["completion_mask"].bool()
    position_ids = rows.get("position_ids")
    # position t predicts token t+1: select t where t+1 is a completion token of the same sequence
    nxt = cmask[:, 1:]
    if position_ids is not None:
        nxt = nxt & (position_ids[:, 1:] != 0)
    head_mask = torch.zeros_like(cmask)
    head_mask[:, :-1] = nxt
    targets = input_ids[:, 1:][nxt]
    order = None
    if position_ids is not None:
        seq_all = rows["sequence_index"].reshape(-1)
        token_seq = seq_all[head_mask.reshape(-1)]
        num_rows = int(seq_all.max().item()) + 1 if seq_all.numel() else 0
        if token_seq.numel() > 1 and bool((token_seq[1:] < token_seq[:-1]).any()):  # bin-packed rows: reorder
            order = torch.argsort(token_seq, stable=True)                             # the tokens by sequence
            token_seq = token_seq[order]
        model_inputs = {"input_ids": input_ids, "position_ids": position_ids}
    else:
        token_seq = head_mask.nonzero(as_tuple=True)[0]
        num_rows = input_ids.shape[0]
        model_inputs = {"input_ids": input_ids, "attention_mask": rows["attention_mask"]}
    # a vision-language model's image inputs (pixel_values, image_sizes, token_type_ids, ...): every other key
    model_inputs.update({k: v for k, v in rows.items() if k not in ROW_KEYS})
    with select_head_positions(model, head_mask):
        logits = model(**model_inputs, use_cache=False).logits[0]  # (N, V)
    logits32 = logits.float()
    lse = torch.logsumexp(logits32, dim=-1)
    token_logps = logits32.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse
    token_mean_logit = logits32.detach().mean(-1)
    entropy = top1 = None
    if with_token_stats:  # the metrics TRL's DPO/KTO log: entropy and whether the target is the top-1 token
        entropy = entropy_from_logits(logits.detach())
        top1 = logits.detach().argmax(dim=-1) == targets
    lssp = None
    if with_log_sum_sq_probs:
        from ..losses.preference import log_sum_squared_probs

        lssp = log_sum_squared_probs(logits.detach())
    del logits32, logits
    if order is not None:  # tokens grouped by sequence, in sequence order (SequenceLogps.per_token relies on it)
        token_logps, token_mean_logit = token_logps[order], token_mean_logit[order]
        lssp, entropy, top1 = (x[order] if x is not None else None for x in (lssp, entropy, top1))
    sums = sequence_sums(token_logps, token_seq, num_rows)
    counts = torch.bincount(token_seq, minlength=num_rows).to(token_logps.dtype)
    mean_logits = sequence_sums(token_mean_logit, token_seq, num_rows) / counts.clamp(min=1)
    return SequenceLogps(sums, counts, mean_logits, token_logps, token_seq, lssp, entropy, top1)


@contextmanager
def eval_mode(model):
    """Temporarily put ``model`` in eval mode (dropout off)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _is_peft_model(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        return False
    return isinstance(unwrap(model), PeftModel)


# =============================================================================================
# TR-DPO reference syncing
# =============================================================================================


class SyncRefModelCallback(TrainerCallback):
    """TR-DPO (Gorbatovski et al. 2024): every ``ref_model_sync_steps`` optimizer steps, soft-update the
    reference policy, ``ref = alpha * policy + (1 - alpha) * ref`` (``alpha = ref_model_mixup_alpha``)."""

    def __init__(self, trainer: PreferenceTrainer):
        self.trainer = trainer

    @staticmethod
    @torch.no_grad()
    def mix(policy: torch.nn.Module, ref: torch.nn.Module, alpha: float) -> None:
        ref_params = dict(unwrap(ref).named_parameters())
        for name, p in unwrap(policy).named_parameters():
            r = ref_params.get(name)
            if r is not None and r.shape == p.shape:
                r.mul_(1.0 - alpha).add_(p.detach().to(r.dtype), alpha=alpha)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % args.ref_model_sync_steps == 0:
            self.mix(self.trainer.model, self.trainer.ref_model, args.ref_model_mixup_alpha)
            self.trainer.ref_syncs += 1


# =============================================================================================
# the trainer core
# =============================================================================================


class PreferenceTrainer(BaseTrainer):
    """Shared core of DPO/CPO/ORPO (paired) and KTO/BCO (unpaired); see the module docstring.

    Subclasses set ``_paired`` / ``_uses_reference`` and implement ``_compute_loss(model, batch)``
    returning a scalar loss averaged over the examples of the micro-batch (after recording metrics).
    """

    _paired = True
    _uses_reference = False
    _ref_columns: tuple[str, ...] = ()
    _input_columns = ("prompt_input_ids", "chosen_input_ids", "rejected_input_ids", "ref_chosen_logps",
                      "ref_rejected_logps")
    _vision = False  # the data has images: raw rows, collated by DataCollatorForVisionPreference
    _not_model_inputs = ("ref_chosen_logps", "ref_rejected_logps")

    def __init__(self, model, ref_model=None, args: PreferenceConfig | None = None, data_collator=None,
                 train_dataset=None, eval_dataset=None, processing_class=None, compute_metrics=None, callbacks=None,
                 optimizers=(None, None), optimizer_cls_and_kwargs=None, preprocess_logits_for_metrics=None,
                 peft_config=None):
        self._ref_cache: dict[str, dict[str, torch.Tensor]] = {}
        self._policy_is_reference = True
        self.ref_syncs = 0
        self.running: RunningMean | None = None
        ref_kwargs = getattr(args, "ref_model_init_kwargs", None) if args is not None else None
        if not self._uses_reference and ref_model is not None:
            raise ValueError(f"{type(self).__name__} is reference-free and takes no ref_model.")
        self._owns_ref = ref_model is None or isinstance(ref_model, str)  # else the user's object: dtype kept
        if isinstance(ref_model, str):
            ref_model = load_pretrained(ref_model, None, frozen=True, **(ref_kwargs or {}))
        elif ref_model is not None and ref_kwargs:
            raise ValueError("ref_model_init_kwargs only applies when ref_model is given as a name or path.")
        if ref_model is not None and ref_model is model:
            raise ValueError("ref_model must be a different object than model; pass ref_model=None to get a frozen "
                             "copy of the initial policy.")
        super().__init__(
            model, args, processing_class=processing_class, peft_config=peft_config, data_collator=data_collator,
            train_dataset=train_dataset, eval_dataset=eval_dataset, compute_metrics=compute_metrics,
            callbacks=callbacks, optimizers=optimizers, optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        )
        if is_vision_model(self.model) and self.args.padding_free:
            raise _no_padding_free("a vision-language model")
        if self._vision and not is_vision_model(self.model):
            raise ValueError(
                f"The dataset has images but {type(unwrap(self.model)).__name__} is a text-only model: it cannot see "
                "them. Train a vision-language model (loaded with AutoModelForImageTextToText), or drop the image "
                "column.")
        if data_collator is None and not self._vision:
            # variable-length kernels take one (1, N) row; sdpa/eager (a dense N x N mask for one row) get bin-packed
            # rows no longer than the longest sequence. Models that cannot keep packed sequences apart stay padded.
            supported = self.settle_padding_free(self.data_collator, self.args.padding_free)
            if self.args.padding_free and not supported:
                self.data_collator.padding_free = False
                logger.warning("padding_free=True: posttrain cannot tell whether %s keeps sequences that share a row "
                               "apart by their position_ids, so batches are padded (same loss).",
                               type(unwrap(self.model)).__name__)
        if self.args.disable_dropout:
            disable_dropout(self.model)
        self.ref_model = self._setup_reference(ref_model, self.args)
        if getattr(self.args, "sync_ref_model", False):
            if self.ref_model is None:
                raise ValueError("sync_ref_model=True needs a reference model in memory, but the reference is the "
                                 "policy with its adapter disabled (PEFT) or absent. Pass ref_model= or drop PEFT.")
            self.add_callback(SyncRefModelCallback(self))

    # -- hooks of BaseTrainer: collator and dataset preparation ------------------------------------
    def make_collator(self, processing_class, args):
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        pad = args.padding_value if args.padding_value is not None else tokenizer.pad_token_id
        if self._vision:
            return DataCollatorForVisionPreference(
                processing_class, max_length=args.max_length, max_prompt_length=args.max_prompt_length,
                max_completion_length=args.max_completion_length, truncation_mode=args.truncation_mode,
                pad_to_multiple_of=args.pad_to_multiple_of, padding_value=pad)
        if self._paired:
            return DataCollatorForPreference(pad, padding_free=bool(args.padding_free),
                                             pad_to_multiple_of=args.pad_to_multiple_of)
        return DataCollatorForUnpairedPreference(pad, padding_free=bool(args.padding_free),
                                                 pad_to_multiple_of=args.pad_to_multiple_of,
                                                 kl_rows=self._needs_kl_rows(args))

    def _needs_kl_rows(self, args) -> bool:
        return False

    def prepare_dataset(self, dataset, processing_class, args: PreferenceConfig, split: str):
        """Validate and tokenize a raw split (see the module docstring); tokenized splits pass through."""
        if dataset is None:
            return None
        trainer = type(self).__name__
        columns = dataset.column_names
        if self._paired and "prompt_input_ids" in columns and "chosen_input_ids" in columns:
            return dataset  # already tokenized
        if not self._paired and "prompt_input_ids" in columns and "completion_input_ids" in columns:
            return dataset
        if image_column(columns) is not None:
            return self.prepare_vision_dataset(dataset, processing_class, args, split)
        if len(dataset) == 0:
            raise DatasetFormatError(f"The {split} dataset is empty.")
        self._check_columns(columns, trainer, split)
        fmt = detect_format(columns, dataset[0])
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        lengths = dict(max_prompt_length=args.max_prompt_length, max_completion_length=args.max_completion_length,
                       max_length=args.max_length, truncation_mode=args.truncation_mode)
        if self._paired:
            require_kind(fmt, (PREFERENCE, PREFERENCE_IMPLICIT), trainer, hint=(
                "Unpaired data (prompt/completion/label) trains with KTOTrainer or BCOTrainer."
                if fmt.kind == UNPAIRED_PREFERENCE else ""))
            out_columns = ("chosen", "rejected")
        else:
            require_kind(fmt, (UNPAIRED_PREFERENCE, PREFERENCE, PREFERENCE_IMPLICIT), trainer)
            if fmt.kind != UNPAIRED_PREFERENCE:
                # validate the pairs first, so errors name the row of the user's data
                for i, example in enumerate(dataset):
                    validate_example(example, fmt, i)
                dataset = unpair_preference(dataset, num_proc=args.dataset_num_proc)
                fmt = detect_format(dataset.column_names, dataset[0])
            out_columns = ("completion",)
        kwargs = dict(tokenizer=processing_class, fmt=fmt, eos_token_id=tokenizer.eos_token_id,
                      columns=out_columns, lengths=lengths)
        keep_label = not self._paired

        def fn(example, row):
            out = tokenize_preference_row(example, row, **kwargs)
            if keep_label:
                out["label"] = example["label"]
            return out

        dataset = dataset.map(fn, with_indices=True, remove_columns=dataset.column_names,
                              num_proc=args.dataset_num_proc, desc=f"Tokenizing {split} dataset")
        dataset = report_truncation(dataset, split, args, self._paired)
        return self._after_tokenize(dataset, args)

    def prepare_vision_dataset(self, dataset, processing_class, args: PreferenceConfig, split: str):
        """A dataset with images stays raw: :class:`DataCollatorForVisionPreference` processes the images batch by
        batch. Every row is checked now (format, text, image placeholders against images), and the Trainer keeps the
        columns the collator reads."""
        trainer = type(self).__name__
        column = image_column(dataset.column_names)
        if not self._paired:
            raise ValueError(f"{trainer} does not train on image data; paired preference trainers (DPOTrainer) do.")
        if not has_image_processor(processing_class):
            raise DatasetFormatError(
                f"The {split} dataset has an '{column}' column but the processing class is "
                f"{type(processing_class).__name__}, which cannot process images: a text-only model cannot see "
                "them. Train a vision-language model with its processor (AutoProcessor), or drop the column.")
        if args.padding_free:
            raise _no_padding_free("image data")
        self._check_columns(dataset.column_names, trainer, split)
        self._vision = True
        self.make_collator(processing_class, args).validate(dataset, split)
        self._input_columns = tuple(sorted(set(self._input_columns) | {column, "prompt", "chosen", "rejected"}))
        return dataset

    def _after_tokenize(self, dataset, args):
        return dataset

    def _check_columns(self, columns, trainer: str, name: str) -> None:
        cols = set(columns)
        if self._paired:
            for present, missing in (("chosen", "rejected"), ("rejected", "chosen")):
                if present in cols and missing not in cols:
                    raise DatasetFormatError(
                        f"{trainer}: the {name} dataset has a '{present}' column but no '{missing}' column "
                        f"(columns: {sorted(cols)}). Every row needs a prompt, a chosen and a rejected completion: "
                        '{"prompt": "...", "chosen": "...", "rejected": "..."}.')
            if "label" in cols and "completion" in cols:
                raise DatasetFormatError(
                    f"{trainer} trains on paired preferences (prompt/chosen/rejected), but the {name} dataset is "
                    "unpaired (prompt/completion/label). Use KTOTrainer or BCOTrainer for unpaired data.")
        elif "completion" in cols and "prompt" in cols and "label" not in cols:
            raise DatasetFormatError(
                f"{trainer}: the {name} dataset has 'prompt' and 'completion' but no 'label' column (a bool per row: "
                'true = desirable). Expected rows like {"prompt": "...", "completion": "...", "label": true}.')


    # -- reference policy -----------------------------------------------------------------------
    def _setup_reference(self, ref_model, args):
        """Return the separate reference model to keep in memory, or None (PEFT / precomputed / none)."""
        if not self._uses_reference or getattr(args, "reference_free", False):
            if ref_model is not None:
                raise ValueError("reference_free=True takes no ref_model.")
            return None
        if ref_model is None:
            if _is_peft_model(self.model) or args.precompute_ref_log_probs:
                return None  # adapter disabled, or the initial policy computes the columns before training
            ref_model = frozen_copy(unwrap(self.model))  # ZeRO-3: partitioned, never whole
        # the reference runs only in reference_logps (under autocast_region); TR-DPO mixes the policy into it
        return self.prepare_frozen_model(ref_model, no_dropout=args.disable_dropout,
                                         autocast_only=self._owns_ref and not getattr(args, "sync_ref_model", False))

    @torch.no_grad()
    def reference_logps(self, rows: Mapping[str, torch.Tensor]) -> SequenceLogps:
        """Completion log-probs of ``rows`` under the reference policy (no grad, eval mode)."""
        with self.sequence_rows(rows):  # (also when precomputing, outside the training step)
            return self._reference_logps(rows)

    def _reference_logps(self, rows: Mapping[str, torch.Tensor]) -> SequenceLogps:
        if self.ref_model is not None:
            # in the training precision, like the policy's log-probs it is compared with: accelerate wraps only the
            # trained model's forward in its autocast region, so under bf16 a separate reference ran in float32
            # (twice the CPU time of its forward, and rewards != 0 at an unchanged policy)
            with eval_mode(self.ref_model), self.autocast_region():
                return completion_logps(self.ref_model, rows)
        policy = unwrap(self.model)
        if _is_peft_model(policy):
            with policy.disable_adapter(), eval_mode(policy):
                return completion_logps(policy, rows)
        if self._policy_is_reference:
            with eval_mode(policy):
                return completion_logps(policy, rows)
        raise RuntimeError(
            "No reference policy is available: precompute_ref_log_probs=True but this dataset has no precomputed "
            "reference columns and the policy has already been trained. Prepare every dataset before training.")

    # -- precomputed reference log-probs ------------------------------------------------------------
    def _reference_columns(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The reference columns (``self._ref_columns``) of one collated batch."""
        raise NotImplementedError

    def _dataset_key(self, dataset) -> str:
        """A key of the tokenized content and of the reference model, for the cache file name."""
        h = hashlib.sha256()
        ds = dataset.flatten_indices() if getattr(dataset, "_indices", None) is not None else dataset
        table = ds.data.table
        for col in sorted(table.column_names):
            h.update(col.encode())
            for chunk in table.column(col).chunks:
                for buf in chunk.buffers():
                    if buf is not None:
                        h.update(memoryview(buf))
        ref = self.ref_model if self.ref_model is not None else unwrap(self.model)
        h.update(str(getattr(getattr(ref, "config", None), "_name_or_path", type(ref).__name__)).encode())
        # ds_numel: a ZeRO-3 partition's full size (its local numel() is 0), so the key does not depend on the set-up
        h.update(str(sum(getattr(p, "ds_numel", p.numel()) for n, p in ref.named_parameters() if "lora_" not in n)).encode())
        h.update(type(self).__name__.encode())
        return h.hexdigest()[:20]

    def _compute_reference_table(self, dataset) -> dict[str, torch.Tensor]:
        from torch.utils.data import DataLoader

        bs = self.args.precompute_ref_batch_size or self.args.per_device_eval_batch_size
        loader = DataLoader(dataset, batch_size=bs, shuffle=False, collate_fn=self.data_collator,
                            num_workers=self.args.dataloader_num_workers)
        loader = self.accelerator.prepare(loader)
        parts: dict[str, list[torch.Tensor]] = defaultdict(list)
        # Under ZeRO-3 the policy is partitioned and not yet inside its training engine: compute with a partitioned
        # frozen copy in an inference engine of its own, dropped afterwards.
        temporary = (self.ref_model is None and self._policy_is_reference and not _is_peft_model(self.model)
                     and is_zero3_partitioned(unwrap(self.model)))
        if temporary:
            self.ref_model = self.prepare_frozen_model(frozen_copy(unwrap(self.model)))
        try:
            for batch in loader:
                for k, v in self._reference_columns(batch).items():
                    parts[k].append(self.accelerator.gather_for_metrics(v.float()).cpu())
        finally:
            if temporary:
                self.ref_model = None
        return {k: torch.cat(v) for k, v in parts.items()}

    def _with_reference_columns(self, dataset, name: str, checkpoint: str | None):
        if dataset is None or all(c in dataset.column_names for c in self._ref_columns):
            return dataset
        key = self._dataset_key(dataset)
        table = None
        for folder in (checkpoint, self.args.output_dir):
            path = os.path.join(folder, f"{REFERENCE_CACHE_PREFIX}{key}.pt") if folder else None
            if path and os.path.isfile(path):
                table = torch.load(path, map_location="cpu", weights_only=True)
                logger.info("Loaded precomputed reference log-probs of the %s dataset from %s", name, path)
                break
        if table is None:
            table = self._compute_reference_table(dataset)
            if self.args.should_save:
                os.makedirs(self.args.output_dir, exist_ok=True)
                torch.save(table, os.path.join(self.args.output_dir, f"{REFERENCE_CACHE_PREFIX}{key}.pt"))
        self._ref_cache[key] = table
        for col in self._ref_columns:
            values = table[col]
            if len(values) != len(dataset):
                raise RuntimeError(f"Cached reference log-probs hold {len(values)} rows for a {len(dataset)}-row "
                                   f"{name} dataset; delete {REFERENCE_CACHE_PREFIX}{key}.pt and retry.")
            dataset = dataset.add_column(col, values.tolist())
        return dataset

    def precompute_reference_logps(self, checkpoint: str | None = None) -> None:
        """Add the reference log-prob columns to the train and eval datasets (from the cache when present)."""
        if not (self._uses_reference and getattr(self.args, "precompute_ref_log_probs", False)):
            return
        if getattr(self.args, "reference_free", False):
            return
        self.train_dataset = self._with_reference_columns(self.train_dataset, "train", checkpoint)
        if isinstance(self.eval_dataset, dict):
            self.eval_dataset = {k: self._with_reference_columns(v, k, checkpoint) for k, v in self.eval_dataset.items()}
        else:
            self.eval_dataset = self._with_reference_columns(self.eval_dataset, "eval", checkpoint)

    # -- training entry points ----------------------------------------------------------------------
    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, ignore_keys_for_eval=None, **kwargs):
        checkpoint = resume_from_checkpoint
        if isinstance(checkpoint, bool):
            checkpoint = None
            if resume_from_checkpoint:
                from transformers.trainer_utils import get_last_checkpoint

                checkpoint = get_last_checkpoint(self.args.output_dir)
                if checkpoint is None:
                    raise ValueError(f"No valid checkpoint found in output directory ({self.args.output_dir}).")
        if checkpoint is not None:
            self._load_extra_state(checkpoint)
        self.precompute_reference_logps(checkpoint)
        self._policy_is_reference = False
        return super().train(resume_from_checkpoint=checkpoint, trial=trial,
                             ignore_keys_for_eval=ignore_keys_for_eval, **kwargs)

    def evaluate(self, *args, **kwargs):
        if self._policy_is_reference:
            self.precompute_reference_logps()
        return super().evaluate(*args, **kwargs)

    # -- checkpoints: cached reference log-probs, running means, synced reference ---------------------
    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if self.args.should_save and os.path.isdir(folder):
            self._save_extra_state(folder)

    def _extra_state(self) -> dict[str, Any]:
        return {"running": self.running.state_dict()} if self.running is not None else {}

    def _save_extra_state(self, folder: str) -> None:
        for key, table in self._ref_cache.items():
            torch.save(table, os.path.join(folder, f"{REFERENCE_CACHE_PREFIX}{key}.pt"))
        state = self._extra_state()
        if state:
            with open(os.path.join(folder, EXTRA_STATE_NAME), "w", encoding="utf-8") as f:
                json.dump(state, f)
        if getattr(self.args, "sync_ref_model", False) and self.ref_model is not None:
            from safetensors.torch import save_file

            sd = {k: v.detach().contiguous().cpu() for k, v in unwrap(self.ref_model).state_dict().items()}
            # tied weights share storage; safetensors wants one copy of each
            seen, unique = set(), {}
            for k, v in sd.items():
                ptr = (v.data_ptr(), tuple(v.shape))
                if ptr not in seen:
                    seen.add(ptr)
                    unique[k] = v.clone()
            save_file(unique, os.path.join(folder, REF_MODEL_STATE_NAME))

    def _load_extra_state(self, folder: str) -> None:
        path = os.path.join(folder, EXTRA_STATE_NAME)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                state = json.load(f)
            if "running" in state:
                self.running = self.running or RunningMean()
                self.running.load_state_dict(state["running"])
        ref_path = os.path.join(folder, REF_MODEL_STATE_NAME)
        if getattr(self.args, "sync_ref_model", False) and self.ref_model is not None and os.path.isfile(ref_path):
            from safetensors.torch import load_file

            unwrap(self.ref_model).load_state_dict(load_file(ref_path, device=str(self.args.device)), strict=False)

    # -- loss -------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self._ref_columns and not getattr(self.args, "reference_free", False) and \
                not all(c in inputs for c in self._ref_columns):
            # the reference's gradient-free forward first: its activations are gone before the policy's forward
            # keeps its own for backward, so the two peaks do not stack
            inputs = {**inputs, **self._reference_columns(inputs)}
        loss = self._compute_loss(model, inputs)
        if self.model.training:
            loss = loss / self.current_gradient_accumulation_steps
        attn = inputs.get("attention_mask")
        index = inputs.get("sequence_index")  # padding-free: -1 on the row-end padding
        self.count_tokens(attn.sum() if attn is not None else (index >= 0).sum() if index is not None
                          else inputs["input_ids"].numel())
        return (loss, {}) if return_outputs else loss

    def _compute_loss(self, model, batch) -> torch.Tensor:
        raise NotImplementedError

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager(), self.sequence_rows(inputs):
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def model_rows(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The model inputs of a collated batch: the rows, and with image data everything the processor returned."""
        rows = {k: batch[k] for k in ROW_KEYS if k in batch}
        if self._vision:
            rows.update({k: v for k, v in batch.items() if k not in rows and k not in self._not_model_inputs})
        return rows

    def record_pair_metrics(self, chosen_rewards, rejected_rewards, chosen_logps, rejected_logps, policy: SequenceLogps):
        """TRL's paired metrics for one micro-batch."""
        n = chosen_rewards.shape[0]
        self.record("rewards/chosen", chosen_rewards.mean())
        self.record("rewards/rejected", rejected_rewards.mean())
        self.record("rewards/accuracies", (chosen_rewards > rejected_rewards).float().mean())
        self.record("rewards/margins", (chosen_rewards - rejected_rewards).mean())
        self.record("logps/chosen", chosen_logps.detach().mean())
        self.record("logps/rejected", rejected_logps.detach().mean())
        # mean logits over all completion tokens of each side (and the vocabulary): each row's mean weighted by its
        # completion tokens, pooled over the micro-batches and processes of the logging window, since the token
        # counts differ between processes. (The per-pair means above are left as they are: every process holds the
        # same number of pairs, so the mean of the processes' means is already the mean over all pairs.)
        self.record_pooled("logits/chosen", policy.mean_logits[:n], policy.count[:n])
        self.record_pooled("logits/rejected", policy.mean_logits[n:], policy.count[n:])
        if policy.token_entropy is not None:  # token means over all completion tokens / the chosen ones (as TRL DPO)
            self.record_pooled("entropy", policy.token_entropy)
            self.record_pooled("mean_token_accuracy", policy.token_top1[policy.select(slice(0, n))])

    def chosen_nll(self, policy: SequenceLogps, n: int) -> torch.Tensor:
        """Token-mean negative log-likelihood of the chosen completions (rows ``[0, n)``), the mean taken over the
        chosen tokens of all processes: with N processes (whose gradients DDP averages) the update equals one
        process's on the whole batch."""
        sel = policy.select(slice(0, n))
        count = sel.sum().float()
        if self.accelerator.num_processes > 1:
            count = self.accelerator.gather(count.reshape(1)).sum() / self.accelerator.num_processes
        return -(policy.token_logps[sel].sum() / count.clamp(min=1))


class ReferenceFreePreferenceTrainer(PreferenceTrainer):
    """Paired preference trainer with no reference model (CPO, ORPO): TRL's constructor without ``ref_model``."""

    _paired = True
    _uses_reference = False

    def __init__(self, model, args=None, data_collator=None, train_dataset=None, eval_dataset=None,
                 processing_class=None, compute_metrics=None, callbacks=None, optimizers=(None, None),
                 optimizer_cls_and_kwargs=None, preprocess_logits_for_metrics=None, peft_config=None):
        super().__init__(model, None, args, data_collator, train_dataset, eval_dataset, processing_class,
                         compute_metrics, callbacks, optimizers, optimizer_cls_and_kwargs,
                         preprocess_logits_for_metrics, peft_config)


__all__ = [
    "ReferenceFreePreferenceTrainer",
    "PreferenceConfig", "ReferenceConfig", "PreferenceTrainer", "DataCollatorForPreference",
    "DataCollatorForUnpairedPreference", "DataCollatorForVisionPreference", "SequenceLogps", "SyncRefModelCallback", "build_rows", "completion_logps",
    "fit_lengths", "tokenize_preference_row", "eval_mode", "kl_rows", "concat_rows",
]
