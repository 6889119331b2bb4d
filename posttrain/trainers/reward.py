"""Outcome reward modeling: ``RewardConfig`` and ``RewardTrainer`` (TRL-compatible names).

A reward model is a sequence classifier with one output (``AutoModelForSequenceClassification``,
``num_labels=1``): it reads ``prompt + completion`` and returns a scalar score at the last non-padding
token. It is trained on preference pairs with the Bradley-Terry loss
(:func:`posttrain.losses.reward.bradley_terry_loss`)::

    loss = -log sigmoid(r(prompt, chosen) - r(prompt, rejected) - margin)  [+ coef * (r_c + r_r)^2]

Chosen and rejected sequences of a batch go through the model in **one** forward pass (a ``(2B, L)``
right-padded batch: the B chosen rows, then the B rejected rows).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..data import (
    DatasetFormatError,
    chat_template_ids,
    detect_format,
    pad_sequences,
    require_chat_template,
    require_kind,
    tokenize_prompt_completion,
    validate_example,
)
from ..data.streaming import column_names, drop_as_read, first_row, is_streaming, map_options, refuse_transform
from ..data.tokenize import row_template_kwargs
from ..data.formats import PREFERENCE, PREFERENCE_IMPLICIT
from ..losses.reward import bradley_terry_loss, reward_accuracy
from ..models import disable_dropout, unwrap
from .base import BaseTrainer, PosttrainConfig

logger = logging.getLogger("posttrain")

# Pre-tokenized column names accepted as they are (TRL's current names, and its older ones).
_TOKENIZED = ("chosen_ids", "rejected_ids")  # TRL 1.x's names
# older names of pre-tokenized columns: TRL 0.x's, and TRL 1.x's (and posttrain's) before TRL 1.9
_LEGACY_TOKENIZED = {"input_ids_chosen": "chosen_ids", "input_ids_rejected": "rejected_ids",
                     "chosen_input_ids": "chosen_ids", "rejected_input_ids": "rejected_ids"}


@dataclass
class RewardConfig(PosttrainConfig):
    """Configuration of :class:`RewardTrainer`. Field names follow TRL's ``RewardConfig``.

    ``max_length``: pairs whose chosen or rejected sequence (prompt + completion) is longer are **dropped**
    (truncating would cut off the end of the answer, which is where the score is read); the trainer logs
    how many, and raises a clear error when no pair is left.
    """

    max_length: int | None = field(default=1024, metadata={"help": "Drop pairs whose chosen or rejected sequence is longer than this (None: keep all)."})
    disable_dropout: bool = field(default=True, metadata={"help": "Set every dropout probability of the model to 0."})
    dataset_num_proc: int | None = field(default=None, metadata={"help": "Processes for dataset preparation."})
    chat_template_path: str | None = field(default=None, metadata={"help": "Tokenizer folder or .jinja file whose chat template to use."})
    chat_template_kwargs: dict | None = field(default=None, metadata={"help": (
        "Keyword arguments for the chat template (e.g. {\"enable_thinking\": false}); a row's own "
        "'chat_template_kwargs' column overrides them for that row.")})
    center_rewards_coefficient: float | None = field(
        default=None,
        metadata={"help": "Weight of the reward-centering term mean((r_c + r_r)^2) (Eisenstein et al., 2023); e.g. 0.01."},
    )
    pad_to_multiple_of: int | None = field(default=None, metadata={"help": "Pad sequence length to a multiple of this."})

    def __post_init__(self):
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"max_length must be at least 2 (or None), got {self.max_length}.")
        if self.center_rewards_coefficient is not None and self.center_rewards_coefficient < 0:
            raise ValueError(f"center_rewards_coefficient must be >= 0, got {self.center_rewards_coefficient}.")
        super().__post_init__()


def tokenize_preference_pair(example: Mapping[str, Any], row: int, *, tokenizer, fmt, eos_token_id: int | None,
                             template_kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Validate one preference row and tokenize ``prompt + chosen`` and ``prompt + rejected``.

    Explicit prompts: prompt and completion are tokenized separately and concatenated (standard rows: EOS appended
    to the completion; conversational rows: the chat template), exactly as
    :class:`~posttrain.rollout.scoring.RewardScorer` does at scoring time. Implicit prompts: each full text
    (standard: plus EOS) or full conversation (chat template) is tokenized as a whole, so no shared prompt has to be
    found (one answer may even be a prefix of the other).
    """
    validate_example(example, fmt, row)
    template_kwargs = row_template_kwargs(example, template_kwargs, row)
    out: dict[str, Any] = {}
    for key in ("chosen", "rejected"):
        if fmt.kind == PREFERENCE_IMPLICIT:
            if fmt.conversational:
                ids = chat_template_ids(tokenizer, example[key], **template_kwargs)
            else:
                ids = list(tokenizer(example[key])["input_ids"])
                if eos_token_id is not None and (not ids or ids[-1] != eos_token_id):
                    ids.append(eos_token_id)
        else:
            prompt_ids, completion_ids = tokenize_prompt_completion(
                tokenizer, example["prompt"], example[key], fmt.conversational, eos_token_id, row, **template_kwargs)
            if not completion_ids:
                raise DatasetFormatError(f"Row {row} (0-based), column '{key}': the completion has no tokens; every pair needs a "
                                         "non-empty chosen and rejected completion.")
            ids = prompt_ids + completion_ids
        out[f"{key}_ids"] = ids
    return out


@dataclass
class RewardDataCollator:
    """Collate tokenized pairs into one ``(2B, L)`` right-padded batch: chosen rows first, then rejected rows.

    Returns ``input_ids``, ``attention_mask`` and, when the rows have one, ``margin`` of shape ``(B,)``.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        seqs = [list(ex["chosen_ids"]) for ex in examples] + [list(ex["rejected_ids"]) for ex in examples]
        batch = {
            "input_ids": pad_sequences(seqs, self.pad_token_id, multiple_of=self.pad_to_multiple_of),
            "attention_mask": pad_sequences([[1] * len(s) for s in seqs], 0, multiple_of=self.pad_to_multiple_of),
        }
        if "margin" in examples[0]:
            batch["margin"] = torch.tensor([float(ex["margin"]) for ex in examples], dtype=torch.float32)
        return batch


def prepare_reward_dataset(dataset, processing_class, args: RewardConfig, split: str = "train"):
    """Validate and tokenize a preference split into ``chosen_ids``/``rejected_ids`` (+ ``margin``) rows,
    dropping pairs longer than ``args.max_length`` (see :class:`RewardConfig`). Pre-tokenized splits pass through."""
    if dataset is None:
        return None
    refuse_transform(dataset, split)
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    for old, new in _LEGACY_TOKENIZED.items():
        names = column_names(dataset)
        if old in names and new not in names:
            warnings.warn(f"The {split} dataset's column '{old}' is an older name of '{new}' (TRL 1.x's name), which "
                          "RewardTrainer reads it as; rename it, as the old name will stop being read.", FutureWarning,
                          stacklevel=3)
            dataset = dataset.rename_column(old, new)
    names = column_names(dataset)
    row = first_row(dataset, split)
    if not all(c in names for c in _TOKENIZED):
        fmt = detect_format(names, row)
        require_kind(fmt, (PREFERENCE, PREFERENCE_IMPLICIT), "RewardTrainer",
                     hint="A reward model learns from pairs of a better (chosen) and a worse (rejected) completion.")
        if fmt.conversational:
            require_chat_template(tokenizer, f"The {split} dataset")
        kwargs = dict(tokenizer=tokenizer, fmt=fmt, eos_token_id=tokenizer.eos_token_id,
                      template_kwargs=args.chat_template_kwargs)
        dataset = dataset.map(
            lambda ex, i: tokenize_preference_pair(ex, i, **kwargs), with_indices=True,
            remove_columns=[c for c in names if c != "margin"],
            **map_options(dataset, args.dataset_num_proc, f"Tokenizing {split} dataset"),
        )
    if is_streaming(dataset):  # checked and filtered as the stream is read
        return _checked_stream(dataset, split, args.max_length, "margin" in names)
    if "margin" in names:
        bad = [i for i, m in enumerate(dataset["margin"]) if not _is_margin(m)]
        if bad:
            raise DatasetFormatError(_margin_error(bad[0], dataset[bad[0]]["margin"]))
    if args.max_length is not None:
        lengths = [max(len(c), len(r)) for c, r in zip(dataset["chosen_ids"], dataset["rejected_ids"])]
        keep_rows = [i for i, n in enumerate(lengths) if n <= args.max_length]
        if not keep_rows:
            raise DatasetFormatError(
                f"Every pair of the {split} dataset is longer than max_length={args.max_length} tokens (shortest: "
                f"{min(lengths)}). Increase max_length (or set it to None), or shorten the prompts."
            )
        if len(keep_rows) < len(dataset):
            logger.warning("%s dataset: dropped %d of %d pairs longer than max_length=%d tokens (longest: %d).",
                           split, len(dataset) - len(keep_rows), len(dataset), args.max_length, max(lengths))
            dataset = dataset.select(keep_rows)
    return dataset


def _is_margin(m) -> bool:
    return isinstance(m, (int, float)) and not isinstance(m, bool)


def _margin_error(row: int, value) -> str:
    return (f"Row {row} (0-based), column 'margin': expected a number (how much better 'chosen' is than 'rejected'), "
            f"got {value!r}.")


def _checked_stream(dataset, split: str, max_length: int | None, margin: bool):
    """A tokenized stream whose margins are checked and whose pairs longer than ``max_length`` are dropped as it is
    read (a warning at the first)."""
    def keep(ex, i):
        if margin and not _is_margin(ex["margin"]):
            raise DatasetFormatError(_margin_error(i, ex["margin"]))
        return max_length is None or max(len(ex["chosen_ids"]), len(ex["rejected_ids"])) <= max_length

    return drop_as_read(dataset, keep, lambda ex, i: (
        f"{split} dataset: pairs longer than max_length={max_length} tokens are dropped (row {i}: "
        f"{max(len(ex['chosen_ids']), len(ex['rejected_ids']))} tokens)."))


class ClassifierTrainer(BaseTrainer):
    """Shared constructor of trainers on a classification head (reward models, process reward models).

    Subclasses set ``_auto_class`` (a transformers Auto class name), ``_num_labels`` and ``_peft_task_type``.
    """

    _auto_class = "AutoModelForSequenceClassification"
    _num_labels = 1
    _labels_meaning = "a single reward score"
    _peft_task_type = "SEQ_CLS"

    def __init__(
        self,
        model,
        args: PosttrainConfig | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        compute_metrics=None,
        callbacks=None,
        optimizers=(None, None),
        optimizer_cls_and_kwargs=None,
        preprocess_logits_for_metrics=None,
        peft_config=None,
    ):
        import transformers

        if isinstance(model, str):
            if args is None:
                args = self.config_class(output_dir=f"{model.rstrip('/').split('/')[-1]}-{self._run_suffix}")
            args.model_init_kwargs = {"num_labels": self._num_labels, **(args.model_init_kwargs or {})}
        if peft_config is not None:
            peft_config = _with_task_type(peft_config, self._peft_task_type)
        super().__init__(
            model, args, processing_class=processing_class, peft_config=peft_config,
            auto_class=getattr(transformers, self._auto_class), data_collator=data_collator,
            train_dataset=train_dataset, eval_dataset=eval_dataset, compute_metrics=compute_metrics,
            callbacks=callbacks, optimizers=optimizers, optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        )
        num_labels = getattr(unwrap(self.model).config, "num_labels", None)
        if num_labels != self._num_labels:
            raise ValueError(
                f"{type(self).__name__} needs a model with {self._num_labels} label"
                f"{'s' if self._num_labels > 1 else ''} ({self._labels_meaning}, num_labels={self._num_labels}), but this "
                f"one has num_labels={num_labels}. Load it with {self._auto_class}.from_pretrained(..., "
                f"num_labels={self._num_labels})."
            )
        set_pad_token_id(self.model, self.tokenizer_)
        if self.args.disable_dropout:
            disable_dropout(self.model)


class RewardTrainer(ClassifierTrainer):
    """Train an outcome reward model on preference pairs (explicit or implicit prompt, standard or conversational).

    * ``model``: a sequence-classification model with ``num_labels=1``, or its name/path (loaded with
      ``AutoModelForSequenceClassification`` and ``num_labels=1``; a causal-LM checkpoint gets a fresh score head).
    * ``train_dataset``/``eval_dataset``: ``prompt``/``chosen``/``rejected`` or ``chosen``/``rejected`` rows, with an
      optional float ``margin`` column; or pre-tokenized ``chosen_ids``/``rejected_ids`` rows.
    * ``peft_config``: LoRA; the task type is set to ``SEQ_CLS`` so the score head is trained and saved in full
      (``modules_to_save``).

    Logs ``loss``, ``accuracy`` (fraction of pairs with ``r_c > r_r``), ``margin`` (mean ``r_c - r_r``),
    ``rewards/chosen``, ``rewards/rejected``, ``mean_reward``, ``min_reward``, ``max_reward`` and ``num_tokens``
    (batch statistics, averaged over the steps since the last log). Evaluation logs the same names with the
    ``eval_`` prefix; :meth:`prediction_step` returns logits ``(B, 2) = [r_c, r_r]`` and labels ``0`` (column 0 is
    preferred) for a user's ``compute_metrics``.
    """

    config_class = RewardConfig
    _run_suffix = "Reward"
    _input_columns = ("chosen_ids", "rejected_ids", "margin")

    # -- hooks ----------------------------------------------------------------------------------
    def prepare_dataset(self, dataset, processing_class, args: RewardConfig, split: str):
        return prepare_reward_dataset(dataset, processing_class, args, split)

    def make_collator(self, processing_class, args: RewardConfig):
        return RewardDataCollator(getattr(processing_class, "tokenizer", processing_class).pad_token_id,
                                  args.pad_to_multiple_of)

    # -- loss -----------------------------------------------------------------------------------
    def _rewards(self, model, inputs) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
        rewards = outputs.logits[:, 0].float()
        return rewards.chunk(2)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        chosen, rejected = self._rewards(model, inputs)
        per_pair = bradley_terry_loss(chosen, rejected, inputs.get("margin"), self.args.center_rewards_coefficient)
        # No per-token labels: Trainer passes num_items_in_batch=None and reduce_loss takes this batch's mean.
        loss = self.reduce_loss(per_pair.sum(), per_pair.numel(), None)

        c, r = chosen.detach(), rejected.detach()
        both = torch.cat([c, r])
        self.record("accuracy", reward_accuracy(c, r).mean())
        self.record("margin", (c - r).mean())
        self.record("rewards/chosen", c.mean())
        self.record("rewards/rejected", r.mean())
        self.record("mean_reward", both.mean())
        self.record("min_reward", both.min())
        self.record("max_reward", both.max())
        self.count_tokens(inputs["attention_mask"].sum())
        if return_outputs:
            return loss, {"rewards_chosen": chosen, "rewards_rejected": rejected}
        return loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, out = self.compute_loss(model, inputs, return_outputs=True)
        loss = loss.detach()
        if prediction_loss_only:
            return loss, None, None
        logits = torch.stack([out["rewards_chosen"], out["rewards_rejected"]], dim=1).detach()
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        return loss, logits, labels


def set_pad_token_id(model, tokenizer) -> None:
    """Give the model config the tokenizer's pad token id when it has none (sequence classifiers need it to find
    the last real token of right-padded rows)."""
    base = unwrap(model)
    configs = [getattr(base, "config", None)]
    if hasattr(base, "get_base_model"):
        configs.append(getattr(base.get_base_model(), "config", None))
    for config in configs:
        if config is not None and getattr(config, "pad_token_id", None) is None:
            config.pad_token_id = tokenizer.pad_token_id


def _with_task_type(peft_config, task_type: str):
    """A copy of a PEFT config with ``task_type`` set (so PEFT keeps the classification head trainable)."""
    import copy

    current = getattr(peft_config, "task_type", None)
    current = getattr(current, "value", current)
    if current == task_type:
        return peft_config
    if current is not None:
        logger.warning("peft_config.task_type is %s; using %s so the classification head is trained and saved.",
                       current, task_type)
    peft_config = copy.deepcopy(peft_config)
    peft_config.task_type = task_type
    return peft_config


__all__ = ["RewardConfig", "RewardTrainer", "RewardDataCollator", "prepare_reward_dataset", "tokenize_preference_pair",
           "disable_dropout", "set_pad_token_id"]
