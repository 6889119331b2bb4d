"""The shared core of the offline preference trainers (DPO, CPO, ORPO, KTO, BCO).

What these trainers have in common and is about training lives here; the data side lives in the data layer
(:mod:`posttrain.data.preference`: tokenization with truncation, the collators) and the log-probs in
:mod:`posttrain.trainers.logprobs`:

* **Configuration** — :class:`PreferenceConfig` (lengths, truncation, padding-free, ``beta``) and
  :class:`ReferenceConfig` (how the reference policy is obtained: separate model, PEFT adapter
  disabled, precomputed log-probs, TR-DPO syncing).
* **Data preparation** — :meth:`PreferenceTrainer.prepare_dataset` detects the format, extracts implicit
  prompts and tokenizes each row with :func:`~posttrain.data.preference.tokenize_preference_row`. Paired trainers
  keep ``prompt_input_ids``/``chosen_input_ids``/``rejected_input_ids``; unpaired trainers (KTO, BCO) keep
  ``prompt_input_ids``/``completion_input_ids``/``label`` and unpair paired data with
  :func:`~posttrain.data.unpair_preference`. The collator puts chosen and rejected rows into one batch, so the
  policy runs **one** forward pass per step.
* **Reference policy** — :meth:`PreferenceTrainer.reference_logps`: a frozen model, the policy with
  its adapter disabled, or (before training) the policy itself; always under ``torch.no_grad()`` in
  eval mode. Precomputed reference log-probs are stored as dataset columns and cached in a file keyed
  by the dataset content, in ``output_dir`` and in every checkpoint, so a resumed run reuses them.
* **Metrics** — TRL's names (``rewards/chosen``, ``logps/rejected``, ...), averaged across steps and
  processes by :meth:`BaseTrainer.log`.

A trainer subclass only implements ``_compute_loss`` with a loss from :mod:`posttrain.losses.preference`, :mod:`~posttrain.losses.cpo` or
:mod:`~posttrain.losses.kto`.
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..data import (DatasetFormatError, column_names, detect_format, first_row, is_streaming, map_options,
                    refuse_transform, require_kind, require_sized, validate_example)
from ..data.formats import PREFERENCE, PREFERENCE_IMPLICIT, UNPAIRED_PREFERENCE
from ..data.preference import (DataCollatorForPreference, DataCollatorForUnpairedPreference,
                               TRL_1X_NAMES, DataCollatorForVisionPreference, report_truncation,
                               tokenize_preference_row)
from ..data.templates import unpair_preference
from ..data.tokenize import TRUNCATION_MODES
from ..data.vision import has_image_processor, image_column, padded_only_error
from ..losses.tokens import LossSum
from ..losses.kto import RunningMean
from ..models import disable_dropout, is_peft_model, is_vision_model, load_frozen, unwrap
from ..models.moe import collect_aux_loss
from ..models.sharding import frozen_copy, is_zero3_partitioned
from .base import BaseTrainer, PosttrainConfig, check_choice, require_positive
from .logprobs import ROW_KEYS, SequenceLogps, completion_logps
from .reference import ReferencePolicy, SyncRefModelCallback, reference_cache_key

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
    router_aux_loss_coef: float = field(default=0.001, metadata={"help": (
        "Mixture-of-Experts models: the weight of the router's load-balancing loss added to the loss (logged as "
        "aux_loss); 0 turns it off. No effect on dense models.")})
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
    chat_template_kwargs: dict | None = field(default=None, metadata={"help": (
        "Keyword arguments for the chat template (e.g. {\"enable_thinking\": false}); a row's own "
        "'chat_template_kwargs' column overrides them for that row.")})
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


def _no_padding_free(what: str) -> ValueError:
    return padded_only_error("padding_free=True", what, "Leave padding_free unset (padded batches).")


# =============================================================================================
# the trainer core
# =============================================================================================


class PreferenceTrainer(BaseTrainer):
    """Shared core of DPO/CPO/ORPO (paired) and KTO/BCO (unpaired); see the module docstring.

    Subclasses set ``_paired`` and implement ``_compute_loss(model, batch)`` returning the micro-batch's loss as a
    :class:`~posttrain.losses.tokens.LossSum` over its examples (pairs, or KTO's rows), after recording metrics.
    """

    _paired = True
    _ref_columns: tuple[str, ...] = ()
    _input_columns = ("prompt_input_ids", "chosen_input_ids", "rejected_input_ids", "prompt_ids", "chosen_ids",
                      "rejected_ids", "ref_chosen_logps", "ref_rejected_logps")
    _vision = False  # the data has images: raw rows, collated by DataCollatorForVisionPreference
    _not_model_inputs = ("ref_chosen_logps", "ref_rejected_logps")

    def __init__(self, model, args: PreferenceConfig | None = None, data_collator=None, train_dataset=None,
                 eval_dataset=None, processing_class=None, compute_metrics=None, callbacks=None,
                 optimizers=(None, None), optimizer_cls_and_kwargs=None, preprocess_logits_for_metrics=None,
                 peft_config=None):
        self.running: RunningMean | None = None
        super().__init__(
            model, args, processing_class=processing_class, peft_config=peft_config, data_collator=data_collator,
            train_dataset=train_dataset, eval_dataset=eval_dataset, compute_metrics=compute_metrics,
            callbacks=callbacks, optimizers=optimizers, optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        )
        self.use_router_aux_loss(self.args.router_aux_loss_coef)
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

    # DPO, KTO: prepared splits name their token columns as TRL 1.x does (prompt_ids, chosen_ids, ...); CPO, ORPO and
    # BCO keep TRL 0.x's (prompt_input_ids, ...), as TRL's experimental trainers do
    _trl_1x_names = False

    def prepare_dataset(self, dataset, processing_class, args: PreferenceConfig, split: str):
        """Validate and tokenize a raw split (see the module docstring); tokenized splits pass through. Token
        columns are named by :attr:`_trl_1x_names`; the collators read either name."""
        dataset = self._prepare_split(dataset, processing_class, args, split)
        if dataset is None or not self._trl_1x_names:
            return dataset
        names = column_names(dataset)
        renames = {ours: theirs for theirs, ours in TRL_1X_NAMES.items() if ours in names and theirs not in names}
        return dataset.rename_columns(renames) if renames else dataset

    def _prepare_split(self, dataset, processing_class, args: PreferenceConfig, split: str):
        if dataset is None:
            return None
        refuse_transform(dataset, split)
        trainer = type(self).__name__
        columns = column_names(dataset)
        renames = {old: new for old, new in TRL_1X_NAMES.items() if old in columns and new not in columns}
        if renames:  # pre-tokenized with TRL 1.x's names
            dataset = dataset.rename_columns(renames)
            columns = column_names(dataset)
        if self._paired and "prompt_input_ids" in columns and "chosen_input_ids" in columns:
            return dataset  # already tokenized
        if not self._paired and "prompt_input_ids" in columns and "completion_input_ids" in columns:
            return dataset
        if image_column(columns) is not None:
            return self.prepare_vision_dataset(dataset, processing_class, args, split)
        self._check_columns(columns, trainer, split)
        fmt = detect_format(columns, first_row(dataset, split))
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
                # validate the pairs first, so errors name the row of the user's data (a stream: as it is read)
                if is_streaming(dataset):
                    dataset = dataset.map(lambda ex, i, f=fmt: validate_example(ex, f, i) or ex, with_indices=True)
                else:
                    for i, example in enumerate(dataset):
                        validate_example(example, fmt, i)
                dataset = unpair_preference(dataset, num_proc=args.dataset_num_proc)
                fmt = detect_format(column_names(dataset), first_row(dataset, split))
            out_columns = ("completion",)
        kwargs = dict(tokenizer=processing_class, fmt=fmt, eos_token_id=tokenizer.eos_token_id,
                      columns=out_columns, lengths=lengths, template_kwargs=args.chat_template_kwargs)
        keep_label = not self._paired

        def fn(example, row):
            out = tokenize_preference_row(example, row, **kwargs)
            if keep_label:
                out["label"] = example["label"]
            return out

        dataset = dataset.map(fn, with_indices=True, remove_columns=column_names(dataset),
                              **map_options(dataset, args.dataset_num_proc, f"Tokenizing {split} dataset"))
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


    # -- checkpoints: the running reward mean (BCO, KTO's APO) ----------------------------------------
    def _before_train(self, checkpoint: str | None) -> None:
        if checkpoint is not None:
            self._load_extra_state(checkpoint)

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if self.args.should_save and os.path.isdir(folder):
            self._save_extra_state(folder)

    def _extra_state(self) -> dict[str, Any]:
        return {"running": self.running.state_dict()} if self.running is not None else {}

    def _save_extra_state(self, folder: str) -> None:
        state = self._extra_state()
        if state:
            with open(os.path.join(folder, EXTRA_STATE_NAME), "w", encoding="utf-8") as f:
                json.dump(state, f)

    def _load_extra_state(self, folder: str) -> None:
        path = os.path.join(folder, EXTRA_STATE_NAME)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                state = json.load(f)
            if "running" in state:
                self.running = self.running or RunningMean()
                self.running.load_state_dict(state["running"])

    # -- loss -------------------------------------------------------------------------------------
    def _with_reference_inputs(self, inputs: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        """The batch a loss reads; the trainers with a reference add its log-probs here."""
        return inputs

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = self._with_reference_inputs(inputs)
        with collect_aux_loss(model, self.aux_loss_enabled) as aux:  # the policy's forwards (the reference's: above)
            loss = self.add_router_aux_loss(self.reduce_loss(*self._compute_loss(model, inputs)), aux, model)
        attn = inputs.get("attention_mask")
        index = inputs.get("sequence_index")  # padding-free: -1 on the row-end padding
        self.count_tokens(attn.sum() if attn is not None else (index >= 0).sum() if index is not None
                          else inputs["input_ids"].numel())
        return (loss, {}) if return_outputs else loss

    def _compute_loss(self, model, batch) -> LossSum:
        raise NotImplementedError

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """The loss, and for ``compute_metrics`` the batch's :meth:`keep_predictions` (no logits: they would be
        (tokens, vocabulary) tensors gathered over the whole evaluation)."""
        inputs = self._prepare_inputs(inputs)
        self._predictions = None
        with torch.no_grad(), self.compute_loss_context_manager(), self.sequence_rows(inputs):
            loss = self.compute_loss(model, inputs)
        if prediction_loss_only or self._predictions is None:
            return loss.detach(), None, None
        return (loss.detach(), *self._predictions)

    _predictions = None

    def keep_predictions(self, predictions: torch.Tensor, labels: torch.Tensor) -> None:
        """What an evaluation hands ``compute_metrics`` (``EvalPrediction.predictions`` and ``.label_ids``) for this
        batch: paired trainers the (B, 2) implicit rewards of chosen and rejected, labelled 0 (the chosen column is the
        preferred one: accuracy is ``(predictions.argmax(-1) == label_ids).mean()``); unpaired ones the (B,) implicit
        rewards with the rows' labels (1 desirable, 0 undesirable). Only while evaluating with ``compute_metrics``."""
        if self.compute_metrics is not None and not self.model.training:
            self._predictions = (predictions.detach().float(), labels.detach())

    def model_rows(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The model inputs of a collated batch: the rows, and with image data everything the processor returned."""
        rows = {k: batch[k] for k in ROW_KEYS if k in batch}
        if self._vision:
            rows.update({k: v for k, v in batch.items() if k not in rows and k not in self._not_model_inputs})
        return rows

    def record_pair_metrics(self, chosen_rewards, rejected_rewards, chosen_logps, rejected_logps, policy: SequenceLogps):
        """TRL's paired metrics for one micro-batch."""
        n = chosen_rewards.shape[0]
        self.keep_predictions(torch.stack([chosen_rewards, rejected_rewards], dim=1),
                              torch.zeros(n, dtype=torch.long, device=chosen_rewards.device))
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


class ReferencePreferenceTrainer(PreferenceTrainer):
    """The preference core with a reference policy (DPO, KTO, BCO): TRL's constructor with ``ref_model``.

    The reference is one :class:`~posttrain.trainers.reference.ReferencePolicy`, built once: ``ref_model`` (an
    object, or a name/path loaded with ``ref_model_init_kwargs``), else a frozen copy of the initial policy, else
    (LoRA) the policy with its adapter disabled; with ``precompute_ref_log_probs`` no copy is made and the reference
    log-probs become dataset columns, computed before training and cached by dataset content in ``output_dir`` and
    every checkpoint; with ``sync_ref_model`` the copy is mixed with the policy every ``ref_model_sync_steps`` steps
    (TR-DPO) and saved with checkpoints. Subclasses name their reference columns (``_ref_columns``), compute them
    from a batch (``_reference_columns``), and may turn the reference off (``_wants_reference``)."""

    def __init__(self, model, ref_model=None, args: ReferenceConfig | None = None, data_collator=None,
                 train_dataset=None, eval_dataset=None, processing_class=None, compute_metrics=None, callbacks=None,
                 optimizers=(None, None), optimizer_cls_and_kwargs=None, preprocess_logits_for_metrics=None,
                 peft_config=None):
        self._ref_cache: dict[str, dict[str, torch.Tensor]] = {}
        self.ref_syncs = 0
        # owned: loaded here (or copied from the policy below); else the user's object, whose dtype is kept
        ref_model, owned = load_frozen(ref_model, args.ref_model_init_kwargs if args is not None else None,
                                       kwargs_field="ref_model_init_kwargs")
        if ref_model is not None and ref_model is model:
            raise ValueError("ref_model must be a different object than model; pass ref_model=None to get a frozen "
                             "copy of the initial policy.")
        super().__init__(model, args, data_collator, train_dataset, eval_dataset, processing_class, compute_metrics,
                         callbacks, optimizers, optimizer_cls_and_kwargs, preprocess_logits_for_metrics, peft_config)
        self.reference = self._build_reference(ref_model, owned)
        if self.args.sync_ref_model:
            if self.ref_model is None:
                raise ValueError("sync_ref_model=True needs a reference model in memory, but the reference is the "
                                 "policy with its adapter disabled (PEFT) or absent. Pass ref_model= or drop PEFT.")
            self.add_callback(SyncRefModelCallback(self))

    def prepare_dataset(self, dataset, processing_class, args: ReferenceConfig, split: str):
        if dataset is not None and args.precompute_ref_log_probs:  # a table of every row's reference log-probs
            require_sized(dataset, split, "precompute_ref_log_probs=True")
        return super().prepare_dataset(dataset, processing_class, args, split)

    @property
    def ref_model(self) -> torch.nn.Module | None:
        """The separate reference model kept in memory, or None (adapter disabled, precomputed, or none)."""
        return self.reference.model

    def _wants_reference(self) -> bool:
        """Whether the loss compares the policy with a reference (DPO: not with ``reference_free``)."""
        return True

    # -- reference policy -----------------------------------------------------------------------
    def _build_reference(self, ref_model, owned: bool) -> ReferencePolicy:
        args = self.args
        if not self._wants_reference():
            if ref_model is not None:
                raise ValueError("reference_free=True takes no ref_model.")
            return ReferencePolicy(lambda: self.model)
        if ref_model is None and not is_peft_model(self.model) and not args.precompute_ref_log_probs:
            ref_model = frozen_copy(unwrap(self.model))  # ZeRO-3: partitioned, never whole
        if ref_model is not None:
            # it runs only in reference_logps (under autocast_region); TR-DPO mixes the policy into it
            ref_model = self.prepare_frozen_model(ref_model, no_dropout=args.disable_dropout,
                                                  autocast_only=owned and not args.sync_ref_model)
        # before training the initial policy stands in (precomputing, when there is no copy and no adapter)
        return ReferencePolicy.for_policy(lambda: self.model, ref_model, initial=True,
                                          autocast=self.autocast_region)

    @torch.no_grad()
    def reference_logps(self, rows: Mapping[str, torch.Tensor]) -> SequenceLogps:
        """Completion log-probs of ``rows`` under the reference policy (no grad, eval mode)."""
        with self.sequence_rows(rows):  # (also when precomputing, outside the training step)
            return self._reference_logps(rows)

    def _reference_logps(self, rows: Mapping[str, torch.Tensor]) -> SequenceLogps:
        with self.reference.active() as ref:
            return completion_logps(ref, rows)

    # -- precomputed reference log-probs ------------------------------------------------------------
    def _reference_columns(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The reference columns (``self._ref_columns``) of one collated batch."""
        raise NotImplementedError

    def _dataset_key(self, dataset) -> str:
        """A key of the tokenized content and of the reference model, for the cache file name."""
        ref = self.ref_model if self.ref_model is not None else unwrap(self.model)
        return reference_cache_key(dataset, ref, type(self).__name__)

    def _compute_reference_table(self, dataset) -> dict[str, torch.Tensor]:
        from torch.utils.data import DataLoader

        bs = self.args.precompute_ref_batch_size or self.args.per_device_eval_batch_size
        loader = DataLoader(dataset, batch_size=bs, shuffle=False, collate_fn=self.data_collator,
                            num_workers=self.args.dataloader_num_workers)
        loader = self.accelerator.prepare(loader)
        parts: dict[str, list[torch.Tensor]] = defaultdict(list)
        # Under ZeRO-3 the policy is partitioned and not yet inside its training engine: compute with a partitioned
        # frozen copy in an inference engine of its own, dropped afterwards.
        temporary = (self.reference.initial and self.reference.model is None and not self.reference.adapter
                     and is_zero3_partitioned(unwrap(self.model)))
        if temporary:
            self.reference.model = self.prepare_frozen_model(frozen_copy(unwrap(self.model)))
        try:
            for batch in loader:
                for k, v in self._reference_columns(batch).items():
                    parts[k].append(self.accelerator.gather_for_metrics(v.float()).cpu())
        finally:
            if temporary:
                self.reference.model = None
        return {k: torch.cat(v) for k, v in parts.items()}

    def _with_reference_columns(self, dataset, name: str, checkpoint: str | None):
        if dataset is None or all(c in column_names(dataset) for c in self._ref_columns):
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
        if not (self.args.precompute_ref_log_probs and self._wants_reference()):
            return
        self.train_dataset = self._with_reference_columns(self.train_dataset, "train", checkpoint)
        if isinstance(self.eval_dataset, dict):
            self.eval_dataset = {k: self._with_reference_columns(v, k, checkpoint) for k, v in self.eval_dataset.items()}
        else:
            self.eval_dataset = self._with_reference_columns(self.eval_dataset, "eval", checkpoint)

    # -- training entry points ----------------------------------------------------------------------
    def _before_train(self, checkpoint: str | None) -> None:
        super()._before_train(checkpoint)
        self.precompute_reference_logps(checkpoint)
        self.reference.training_started()

    def evaluate(self, *args, **kwargs):
        if self.reference.initial:
            self.precompute_reference_logps()
        return super().evaluate(*args, **kwargs)

    # -- checkpoints: cached reference log-probs, synced reference ---------------------------------
    def _save_extra_state(self, folder: str) -> None:
        for key, table in self._ref_cache.items():
            torch.save(table, os.path.join(folder, f"{REFERENCE_CACHE_PREFIX}{key}.pt"))
        super()._save_extra_state(folder)
        if self.args.sync_ref_model and self.ref_model is not None:
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
        super()._load_extra_state(folder)
        ref_path = os.path.join(folder, REF_MODEL_STATE_NAME)
        if self.args.sync_ref_model and self.ref_model is not None and os.path.isfile(ref_path):
            from safetensors.torch import load_file

            unwrap(self.ref_model).load_state_dict(load_file(ref_path, device=str(self.args.device)), strict=False)

    # -- loss -------------------------------------------------------------------------------------
    def _with_reference_inputs(self, inputs):
        if self._wants_reference() and not all(c in inputs for c in self._ref_columns):
            # the reference's gradient-free forward first: its activations are gone before the policy's forward
            # keeps its own for backward, so the two peaks do not stack
            inputs = {**inputs, **self._reference_columns(inputs)}
        return inputs


__all__ = ["PreferenceConfig", "ReferenceConfig", "PreferenceTrainer", "ReferencePreferenceTrainer"]
