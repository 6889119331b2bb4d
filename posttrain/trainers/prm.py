"""Process reward modeling: ``PRMConfig`` and ``PRMTrainer`` (TRL-compatible names).

A process reward model (PRM) judges every *step* of a solution, not only the final answer. It is a token
classifier (``AutoModelForTokenClassification``, ``num_labels=2``: 0 = wrong step, 1 = correct step) trained on
stepwise rows::

    {"prompt": "Sort: 3 1 2\\n", "completions": ["insert 3: 3", "insert 1: 1 3", ...], "labels": [true, true, ...]}

Tokenization: ``prompt`` is tokenized as is; each step is tokenized as ``step + step_separator``, and the steps
are concatenated after the prompt. Each step's label sits on its **last token** (the separator token, with the
default ``"\\n"``); every other position has label ``-100``. With ``train_on_last_step_only`` only the last step
keeps its label. Truncation keeps labels aligned with the steps:

1. the prompt keeps its last ``max_prompt_length`` tokens;
2. the steps keep their first ``max_completion_length`` tokens;
3. the whole row keeps its first ``max_length`` tokens.

A step whose last token is cut off loses its label (no label is ever moved onto another token); rows left
with no label at all are dropped, with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..data import IGNORE_INDEX, DatasetFormatError, detect_format, pad_sequences, require_kind, truncate, validate_example
from ..data.streaming import column_names, first_row, is_streaming, map_options, refuse_transform
from ..data.formats import STEPWISE
from ..losses.reward import step_accuracy, step_classification_loss
from .base import PosttrainConfig, checkpointing_field, require_positive
from .reward import ClassifierTrainer

logger = logging.getLogger("posttrain")


@dataclass
class PRMConfig(PosttrainConfig):
    """Configuration of :class:`PRMTrainer`. Field names follow TRL's ``PRMConfig``."""

    gradient_checkpointing: bool = checkpointing_field(False, "as in TRL 0.21, the last TRL with this trainer")

    learning_rate: float = field(default=1e-5, metadata={"help": "Initial AdamW learning rate."})
    max_length: int | None = field(default=1024, metadata={"help": "Keep the first max_length tokens of prompt + steps."})
    max_prompt_length: int | None = field(default=512, metadata={"help": "Keep the last max_prompt_length prompt tokens."})
    max_completion_length: int | None = field(default=None, metadata={"help": "Keep the first max_completion_length step tokens."})
    disable_dropout: bool = field(default=True, metadata={"help": "Set every dropout probability of the model to 0."})
    step_separator: str = field(default="\n", metadata={"help": "Appended to every step; its token carries the step label."})
    train_on_last_step_only: bool = field(default=False, metadata={"help": "Train on the label of the last step only."})
    dataset_num_proc: int | None = field(default=None, metadata={"help": "Processes for dataset preparation."})

    def __post_init__(self):
        require_positive(self, "max_length", "max_prompt_length", "max_completion_length")
        super().__post_init__()


def tokenize_stepwise(
    example: Mapping[str, Any],
    row: int,
    *,
    tokenizer,
    fmt=None,
    step_separator: str = "\n",
    max_length: int | None = None,
    max_prompt_length: int | None = None,
    max_completion_length: int | None = None,
    train_on_last_step_only: bool = False,
) -> dict[str, list[int]]:
    """Validate and tokenize one stepwise row into ``input_ids`` and per-token ``labels`` (see the module docstring)."""
    if fmt is None:
        fmt = detect_format(example.keys(), example)
    validate_example(example, fmt, row)
    if fmt.conversational:
        raise DatasetFormatError(
            f"Row {row} (0-based): PRMTrainer takes standard (plain text) stepwise rows; got a conversational prompt. "
            "Render the prompt to text first (e.g. with tokenizer.apply_chat_template(..., tokenize=False))."
        )
    prompt_ids = list(tokenizer(example["prompt"])["input_ids"])
    steps, step_labels = example["completions"], example["labels"]
    completion_ids: list[int] = []
    completion_labels: list[int] = []
    last = len(steps) - 1
    for j, (step, label) in enumerate(zip(steps, step_labels)):
        ids = tokenizer(step + step_separator, add_special_tokens=False)["input_ids"]
        if not ids:
            raise DatasetFormatError(f"Row {row} (0-based), column 'completions', step {j}: the step and the separator are both "
                                     "empty, so there is no token to put its label on.")
        keep = not train_on_last_step_only or j == last
        completion_ids.extend(ids)
        completion_labels.extend([IGNORE_INDEX] * (len(ids) - 1) + [int(label) if keep else IGNORE_INDEX])
    prompt_ids = truncate(prompt_ids, max_prompt_length, "keep_end")
    completion_ids = truncate(completion_ids, max_completion_length, "keep_start")
    completion_labels = truncate(completion_labels, max_completion_length, "keep_start")
    input_ids = truncate(prompt_ids + completion_ids, max_length, "keep_start")
    labels = truncate([IGNORE_INDEX] * len(prompt_ids) + completion_labels, max_length, "keep_start")
    return {"input_ids": input_ids, "labels": labels}


@dataclass
class DataCollatorForTokenClassification:
    """Right-pad ``input_ids`` (pad token), ``attention_mask`` (0) and ``labels`` (-100) into ``(B, L)`` tensors."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        ids = [list(ex["input_ids"]) for ex in examples]
        m = self.pad_to_multiple_of
        return {
            "input_ids": pad_sequences(ids, self.pad_token_id, multiple_of=m),
            "attention_mask": pad_sequences([[1] * len(s) for s in ids], 0, multiple_of=m),
            "labels": pad_sequences([list(ex["labels"]) for ex in examples], IGNORE_INDEX, multiple_of=m),
        }


def prepare_stepwise_dataset(dataset, processing_class, args: PRMConfig, split: str = "train"):
    """Validate and tokenize a stepwise split into ``input_ids``/``labels`` rows (see the module docstring); rows left
    without any labelled step are dropped with a warning. Pre-tokenized splits (with ``input_ids``) pass through."""
    if dataset is None:
        return None
    refuse_transform(dataset, split)
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    names = column_names(dataset)
    row = first_row(dataset, split)
    if "input_ids" not in names:
        fmt = detect_format(names, row)
        require_kind(fmt, (STEPWISE,), "PRMTrainer")
        kwargs = dict(
            tokenizer=tokenizer, fmt=fmt, step_separator=args.step_separator, max_length=args.max_length,
            max_prompt_length=args.max_prompt_length, max_completion_length=args.max_completion_length,
            train_on_last_step_only=args.train_on_last_step_only,
        )
        from datasets import Features, Sequence, Value

        # Explicit features: the output 'labels' (ints, -100) must not inherit the input's bool 'labels' type.
        features = Features({"input_ids": Sequence(Value("int32")), "labels": Sequence(Value("int64"))})
        dataset = dataset.map(
            lambda ex, i: tokenize_stepwise(ex, i, **kwargs), with_indices=True, features=features,
            remove_columns=names, **map_options(dataset, args.dataset_num_proc, f"Tokenizing {split} dataset"),
        )
    if is_streaming(dataset):  # rows without a labelled step are dropped as the stream is read
        return dataset.filter(lambda ex: any(x != IGNORE_INDEX for x in ex["labels"]))
    keep = [i for i, labels in enumerate(dataset["labels"]) if any(x != IGNORE_INDEX for x in labels)]
    if not keep:
        raise DatasetFormatError(
            f"No row of the {split} dataset has a labelled step left after truncation (max_length="
            f"{args.max_length}, max_prompt_length={args.max_prompt_length}, max_completion_length="
            f"{args.max_completion_length}). Increase these limits."
        )
    if len(keep) < len(dataset):
        logger.warning("%s dataset: dropped %d of %d rows whose every step was truncated away.",
                       split, len(dataset) - len(keep), len(dataset))
        dataset = dataset.select(keep)
    return dataset


class PRMTrainer(ClassifierTrainer):
    """Train a process reward model on stepwise data (``prompt``, ``completions``, ``labels``).

    * ``model``: a token-classification model with 2 labels, or its name/path (loaded with
      ``AutoModelForTokenClassification`` and ``num_labels=2``).
    * ``peft_config``: LoRA; the task type is set to ``TOKEN_CLS`` so the classification head is trained and saved.

    Logs ``loss`` (mean cross-entropy over labelled steps), ``accuracy`` (step-level: the fraction of labelled
    steps whose predicted class is right) and ``num_tokens``; evaluation logs ``eval_loss`` and ``eval_accuracy``.
    """

    config_class = PRMConfig
    _run_suffix = "PRM"
    _input_columns = ("input_ids", "labels")
    _auto_class = "AutoModelForTokenClassification"
    _num_labels = 2
    _labels_meaning = "wrong/correct step"
    _peft_task_type = "TOKEN_CLS"

    # -- hooks ----------------------------------------------------------------------------------
    def prepare_dataset(self, dataset, processing_class, args: PRMConfig, split: str):
        return prepare_stepwise_dataset(dataset, processing_class, args, split)

    def make_collator(self, processing_class, args: PRMConfig):
        return DataCollatorForTokenClassification(getattr(processing_class, "tokenizer", processing_class).pad_token_id)

    # -- loss -----------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
        mask = labels != IGNORE_INDEX
        logits, targets = outputs.logits[mask], labels[mask]
        per_step = step_classification_loss(logits, targets)
        loss = self.reduce_loss(per_step.sum(), per_step.numel(), num_items_in_batch)
        # pooled: the fraction of all processes' labelled steps (their number differs between batches) that are right
        self.record_pooled("accuracy", step_accuracy(logits.detach(), targets))
        self.count_tokens(inputs["attention_mask"].sum())
        if return_outputs:
            return loss, {"logits": outputs.logits.detach()}
        return loss


__all__ = ["PRMConfig", "PRMTrainer", "DataCollatorForTokenClassification", "prepare_stepwise_dataset",
           "tokenize_stepwise"]
