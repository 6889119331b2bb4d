"""Supervised fine-tuning: ``SFTConfig`` and ``SFTTrainer`` (TRL-compatible names)."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..data import (
    IGNORE_INDEX,
    PACKING_STRATEGIES,
    DataCollatorForLanguageModeling,
    DataCollatorForVisionLanguageModeling,
    DatasetFormatError,
    column_names,
    detect_format,
    first_row,
    has_image_processor,
    has_media,
    has_video_processor,
    image_column,
    is_streaming,
    map_options,
    pack_dataset,
    pack_stream,
    processor_chat_template,
    refuse_transform,
    require_kind,
    tokenize_sft_example,
    video_column,
)
from ..data.formats import LANGUAGE_MODELING, PROMPT_COMPLETION
from ..data.streaming import drop_as_read
from ..data_utils import is_conversational_from_value, maybe_convert_to_chatml
from ..data.vision import padded_only_error
from ..data.tokenize import MASK_COLUMNS, TRUNCATION_MODES, has_trainable_label, labelled_row
from ..losses.tokens import entropy_from_logits
from ..losses.sft import SFT_LOSS_TYPES, sft_loss_from_logps, sft_token_loss
from ..models import accepts_videos, is_vision_model, unwrap
from ..models.moe import collect_aux_loss
from .base import BaseTrainer, PosttrainConfig, check_choice, require_positive
from .logprobs import head_logits, head_logps

logger = logging.getLogger("posttrain")


@dataclass
class SFTConfig(PosttrainConfig):
    """Configuration of :class:`SFTTrainer`. Field names follow TRL's ``SFTConfig``.

    Deliberate differences from TRL: ``bf16`` is on where the hardware runs it natively (see
    :class:`PosttrainConfig`); ``padding_free`` defaults to "where the model keeps packed sequences apart".
    """

    learning_rate: float = field(default=2e-5, metadata={"help": "Initial AdamW learning rate."})
    chat_template_path: str | None = field(default=None, metadata={"help": "Tokenizer folder or .jinja file whose chat template to use."})
    chat_template_kwargs: dict | None = field(default=None, metadata={"help": (
        "Keyword arguments for the chat template (e.g. {\"enable_thinking\": false}); a row's own "
        "'chat_template_kwargs' column overrides them for that row.")})
    dataset_text_field: str = field(default="text", metadata={"help": "Column holding the text of language-modeling data."})
    dataset_kwargs: dict[str, Any] | str | None = field(default=None, metadata={"help": "{'skip_prepare_dataset': True} for pre-tokenized data."})
    dataset_num_proc: int | None = field(default=None, metadata={"help": "Processes for dataset preparation."})
    eos_token: str | None = field(default=None, metadata={"help": "End-of-sequence token appended to standard text (default: the tokenizer's)."})
    max_length: int | None = field(default=1024, metadata={"help": "Truncate tokenized sequences to this length (packing: row length)."})
    router_aux_loss_coef: float = field(default=0.001, metadata={"help": (
        "Mixture-of-Experts models: the weight of the router's load-balancing loss added to the loss (logged as "
        "aux_loss); 0 turns it off. No effect on dense models.")})
    truncation_mode: str = field(default="keep_start", metadata={"help": "'keep_start' or 'keep_end'.", "choices": list(TRUNCATION_MODES)})
    shuffle_dataset: bool = field(default=False, metadata={"help": "Shuffle the dataset before preparation."})
    packing: bool = field(default=False, metadata={"help": "Pack sequences into rows of max_length tokens (padding-free)."})
    packing_strategy: str = field(default="bfd", metadata={"help": "'bfd', 'bfd_split' or 'wrapped'.", "choices": list(PACKING_STRATEGIES)})
    padding_free: bool | None = field(default=None, metadata={"help": "Batches without padding: sequences laid end to end with restarting position_ids (flash attention: one row; sdpa/eager: bin-packed into rows no longer than the batch's longest). Default: on when the model supports it (the padded batch's loss, less compute)."})
    pad_to_multiple_of: int | None = field(default=None, metadata={"help": "Pad sequence length to a multiple of this."})
    eval_packing: bool | None = field(default=None, metadata={"help": "Pack the eval set (default: same as packing)."})
    completion_only_loss: bool | None = field(default=None, metadata={"help": "Loss on completion tokens only (default: yes for prompt-completion data)."})
    assistant_only_loss: bool = field(default=False, metadata={"help": "Loss on assistant tokens only (conversational data)."})
    loss_type: str | None = field(default=None, metadata={"help": "'chunked_nll' (default: head on loss tokens only), 'nll' or 'dft'."})

    def __post_init__(self):
        if isinstance(self.dataset_kwargs, str):
            import json

            self.dataset_kwargs = json.loads(self.dataset_kwargs)
        if self.loss_type is None:
            self.loss_type = "chunked_nll"
        check_choice("loss_type", self.loss_type, SFT_LOSS_TYPES)
        check_choice("packing_strategy", self.packing_strategy, PACKING_STRATEGIES)
        check_choice("truncation_mode", self.truncation_mode, TRUNCATION_MODES)
        require_positive(self, "max_length")
        if self.packing and not self.max_length:
            raise ValueError("packing=True needs max_length (the length of each packed row).")
        super().__post_init__()


def _drop_unlearnable(dataset, name: str, args: SFTConfig):
    """Drop the rows whose labels leave nothing to learn, as TRL does, with a count (a stream: as it is read, a
    warning at the first); a split left with none is an error."""
    hint = (f"max_length={args.max_length} ({args.truncation_mode}) may cut away every token the loss trains on "
            "(increase it, shorten or filter long prompts, or use truncation_mode='keep_end'), or the masks leave no "
            "token to train on (completion_only_loss, assistant_only_loss).")
    if is_streaming(dataset):
        return drop_as_read(dataset, lambda ex, i: has_trainable_label(ex),
                            lambda ex, i: f"{name} dataset: rows with no token to train on are dropped (row {i}). {hint}")
    keep = [i for i, labels in enumerate(dataset["labels"]) if has_trainable_label({"labels": labels})]
    if not keep:
        raise DatasetFormatError(f"No row of the {name} dataset has a token to train on: {hint}")
    if len(keep) < len(dataset):
        logger.warning("%s dataset: dropped %d of %d rows with no token to train on. %s",
                       name, len(dataset) - len(keep), len(dataset), hint)
        dataset = dataset.select(keep)
    return dataset


class SFTTrainer(BaseTrainer):
    """Supervised fine-tuning on language-modeling or prompt-completion data, standard or conversational.

    Vision-language models: a dataset with an ``images`` (or ``image``) column and the model's processor as
    ``processing_class`` (loaded by itself when ``model`` is a path) train on padded batches that
    :class:`~posttrain.data.DataCollatorForVisionLanguageModeling` builds from the raw rows, images processed batch
    by batch (``posttrain.data.vision``). A ``videos`` (or ``video``) column works the same way: the processor's video
    processor gets the videos where the model takes them (``pixel_values_videos``), otherwise each video is read as
    its frames, one image each.

    Logs ``loss``, ``mean_token_accuracy``, ``entropy`` and ``num_tokens`` (cumulative input tokens).
    """

    config_class = SFTConfig
    _run_suffix = "SFT"
    _input_columns = ("input_ids", "labels", "completion_mask", "assistant_masks", "seq_lengths")
    _vision = False  # the data has images: raw rows, collated by DataCollatorForVisionLanguageModeling

    def __init__(
        self,
        model,
        args: SFTConfig | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        compute_loss_func=None,
        compute_metrics=None,
        callbacks=None,
        optimizers=(None, None),
        optimizer_cls_and_kwargs=None,
        preprocess_logits_for_metrics=None,
        peft_config=None,
        formatting_func: Callable[[dict], str] | None = None,
    ):
        self._formatting_func = formatting_func
        super().__init__(
            model, args, processing_class=processing_class, peft_config=peft_config,
            data_collator=data_collator, train_dataset=train_dataset, eval_dataset=eval_dataset,
            compute_loss_func=compute_loss_func, compute_metrics=compute_metrics, callbacks=callbacks,
            optimizers=optimizers, optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        )
        self._check_vision_model()
        self.use_router_aux_loss(self.args.router_aux_loss_coef)
        if data_collator is None and not self._vision:
            supported = self.settle_padding_free(self.data_collator, self.args.padding_free)
            if self.args.padding_free is not None and self.data_collator.padding_free and not supported:
                warnings.warn(f"padding_free/packing with {type(unwrap(self.model)).__name__}: posttrain cannot tell "
                              "whether this model keeps sequences that share a row apart by their position_ids "
                              "(flash attention or transformers' create_causal_mask); if it does not, they attend to "
                              "each other. Use padding_free=False without packing to be safe.", stacklevel=2)

    def _check_vision_model(self) -> None:
        """Refuse what a vision-language model cannot train with, before any training step."""
        vlm = is_vision_model(self.model)
        if vlm and (self.args.packing or self.args.padding_free):
            raise _no_padding_free(self.args, "a vision-language model")
        if self._vision and not vlm:
            raise ValueError(
                f"The dataset has images but {type(unwrap(self.model)).__name__} is a text-only model: it cannot see "
                "them. Train a vision-language model (loaded with AutoModelForImageTextToText), or drop the image "
                "column.")

    def make_collator(self, processing_class, args: SFTConfig):
        if self._vision:
            return DataCollatorForVisionLanguageModeling(
                processing_class, completion_only_loss=args.completion_only_loss is not False,
                assistant_only_loss=args.assistant_only_loss, max_length=args.max_length,
                truncation_mode=args.truncation_mode, pad_to_multiple_of=args.pad_to_multiple_of,
                dataset_text_field=args.dataset_text_field,
                eos_token_id=_eos_token_id(getattr(processing_class, "tokenizer", processing_class), args),
                videos_as_frames=not (has_video_processor(processing_class) and accepts_videos(self.model)))
        return DataCollatorForLanguageModeling(
            pad_token_id=getattr(processing_class, "tokenizer", processing_class).pad_token_id,
            completion_only_loss=args.completion_only_loss is not False,
            padding_free=bool(args.padding_free) or args.packing,  # None (auto): settled once the model is known
            pad_to_multiple_of=args.pad_to_multiple_of,
            return_num_real_tokens=True,
            mask_first_label=True,
        )

    # -- data -----------------------------------------------------------------------------------
    def prepare_dataset(self, dataset, processing_class, args: SFTConfig, split: str):
        if dataset is None:
            return None
        packing = args.packing if split == "train" or args.eval_packing is None else args.eval_packing
        name = split
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        skip = bool((args.dataset_kwargs or {}).get("skip_prepare_dataset"))
        columns = column_names(dataset)
        if has_media(columns) and "input_ids" not in columns:
            return self.prepare_vision_dataset(dataset, processing_class, args, name, check=not skip)
        if skip:
            return self._pack(dataset, args) if packing else dataset
        refuse_transform(dataset, name, can_skip=True)
        if "input_ids" in columns:  # pre-tokenized: cut to max_length and labelled like tokenized rows
            return self._labelled(dataset, args, packing, name, columns)
        if "conversations" in columns and is_conversational_from_value(first_row(dataset, name)):
            dataset = dataset.map(maybe_convert_to_chatml, remove_columns=["conversations"],  # ShareGPT rows
                                  **map_options(dataset, args.dataset_num_proc, f"Converting {name} dataset to ChatML"))
            columns = column_names(dataset)
        if args.shuffle_dataset:
            dataset = dataset.shuffle(seed=args.seed)
        if has_image_processor(processing_class) and (args.packing or args.padding_free):
            raise _no_padding_free(args, "a vision-language model's processor")
        if self._formatting_func is not None:
            fn = self._formatting_func
            dataset = dataset.map(lambda ex: {"text": fn(ex)}, remove_columns=columns,
                                  **map_options(dataset, None, f"Formatting {name} dataset"))
            columns, text_field = ["text"], "text"
        else:
            text_field = args.dataset_text_field
        fmt = detect_format(columns, first_row(dataset, name), text_field=text_field)
        _check_sft_format(fmt, args, name)
        template = processor_chat_template(processing_class) if processing_class is not tokenizer else None
        kwargs = dict(
            tokenizer=tokenizer, fmt=fmt, text_field=text_field, eos_token_id=_eos_token_id(tokenizer, args),
            max_length=None if packing else args.max_length, truncation_mode=args.truncation_mode,
            assistant_only_loss=args.assistant_only_loss, completion_only_loss=args.completion_only_loss is not False,
            template_kwargs={**(args.chat_template_kwargs or {}), **({"chat_template": template} if template else {})},
        )
        dataset = dataset.map(
            lambda ex, i: tokenize_sft_example(ex, i, **kwargs), with_indices=True, remove_columns=columns,
            **map_options(dataset, args.dataset_num_proc, f"Tokenizing {name} dataset"),
        )
        return self._labelled(dataset, args, packing, name, column_names(dataset))

    def _labelled(self, dataset, args: SFTConfig, packing: bool, name: str, columns: list[str]):
        """Tokenized rows as the collator takes them (TRL 1.9's layout): ``input_ids`` and ``labels`` (the masks
        baked in, given labels kept) cut to ``max_length`` unless packing; rows left with nothing to learn (every
        loss token truncated away, or masked out) dropped with a count; packed last."""
        completion_only = args.completion_only_loss is not False
        packed_already = "seq_lengths" in columns  # a row holds several sequences: not cut
        limit = None if packing or packed_already else args.max_length
        dataset = dataset.map(
            lambda ex: labelled_row(ex, completion_only_loss=completion_only, max_length=limit,
                                    truncation_mode=args.truncation_mode),
            remove_columns=[c for c in MASK_COLUMNS if c in columns],
            **map_options(dataset, args.dataset_num_proc, f"Labelling {name} dataset"))
        dataset = _drop_unlearnable(dataset, name, args)
        return self._pack(dataset, args) if packing else dataset

    @staticmethod
    def _pack(dataset, args: SFTConfig):
        """A split packed into rows of ``max_length``: a ``Dataset`` as a whole (the tightest fit), a stream a
        thousand rows at a time as it is read (``data_utils.pack_dataset``)."""
        if is_streaming(dataset):
            return pack_stream(dataset, args.max_length, args.packing_strategy)
        return pack_dataset(dataset, args.max_length, args.packing_strategy)

    def prepare_vision_dataset(self, dataset, processing_class, args: SFTConfig, name: str, check: bool = True):
        """A dataset with images stays raw (the collator processes images batch by batch); every row is checked
        now (format, text, number of images; not with ``skip_prepare_dataset``), and the Trainer keeps the columns
        the collator reads."""
        if args.shuffle_dataset:
            dataset = dataset.shuffle(seed=args.seed)
        names = column_names(dataset)
        columns = [c for c in (image_column(names), video_column(names)) if c]
        if not has_image_processor(processing_class):
            raise DatasetFormatError(
                f"The {name} dataset has an '{columns[0]}' column but the processing class is "
                f"{type(processing_class).__name__}, which cannot process images: a text-only model cannot see "
                "them. Train a vision-language model with its processor (AutoProcessor), or drop the column.")
        if args.packing or args.padding_free:
            raise _no_padding_free(args, "image data")
        if self._formatting_func is not None:
            raise ValueError("formatting_func turns rows into plain text and would drop their images; put the text "
                             "in the dataset's columns instead.")
        self._vision = True
        if check:
            _check_sft_format(detect_format(names, first_row(dataset, name), text_field=args.dataset_text_field),
                              args, name)
            if not is_streaming(dataset):  # a stream's rows are checked by the collator as they come
                self.make_collator(processing_class, args).validate(dataset, name)
        columns = {*columns, "messages", "prompt", "completion", args.dataset_text_field}
        self._input_columns = tuple(sorted(set(self._input_columns) | columns))
        return dataset

    # -- loss -----------------------------------------------------------------------------------
    @staticmethod
    def pop_targets(inputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Take the labels (and padding-free batches' ``num_real_tokens``) out of ``inputs``: the next-token targets
        at each position (IGNORE_INDEX where none), their mask, and the real-token count (None when padded)."""
        labels = inputs.pop("labels")
        real_tokens = inputs.pop("num_real_tokens", None)  # padding-free batches: tokens before the row-end padding
        targets = torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), IGNORE_INDEX)], dim=1)
        return targets, targets != IGNORE_INDEX, real_tokens

    def count_input_tokens(self, inputs, real_tokens) -> None:
        """Add the batch's input tokens (without padding) to ``num_tokens``."""
        attn = inputs.get("attention_mask")
        self.count_tokens(attn.sum() if attn is not None else real_tokens if real_tokens is not None
                          else inputs["input_ids"].numel())

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        targets, mask, real_tokens = self.pop_targets(inputs)
        tgt = targets[mask]
        loss_type = self.args.loss_type
        logits = None
        with collect_aux_loss(model, self.aux_loss_enabled) as aux:
            if loss_type != "nll" and not return_outputs:  # the log-probs straight from the head (fused where it can)
                logps, stats = head_logps(model, inputs, mask, tgt, stats=("top1", "entropy"))
                per_token = sft_loss_from_logps(logps, loss_type)
                hits, entropy = stats["top1"].bool(), stats["entropy"]
            else:  # "nll": the model's full logits (the reference path); an evaluation that returns the logits
                logits = model(**inputs, use_cache=False).logits[mask] if loss_type == "nll" else \
                    head_logits(model, inputs, mask)
                per_token = sft_token_loss(logits, tgt, "nll" if loss_type == "chunked_nll" else loss_type)
                hits, entropy = logits.detach().argmax(dim=-1) == tgt, entropy_from_logits(logits.detach())
        loss = self.add_router_aux_loss(self.reduce_loss(per_token.sum(), tgt.numel(), num_items_in_batch), aux, model)

        # token means pooled over the micro-batches and processes of the logging window (as one process would log
        # them with the same global batch), not means of per-micro-batch or per-process means
        self.record_pooled("mean_token_accuracy", hits)
        self.record_pooled("entropy", entropy)
        self.count_input_tokens(inputs, real_tokens)
        if return_outputs:
            return loss, {"logits": logits.detach()}
        return loss


def _no_padding_free(args: SFTConfig, what: str) -> ValueError:
    return padded_only_error("packing=True" if args.packing else "padding_free=True", what,
                             "Leave packing=False and padding_free unset.")


def _check_sft_format(fmt, args: SFTConfig, name: str) -> None:
    """A dataset kind SFT trains on, and the loss-mask options it allows."""
    require_kind(fmt, (LANGUAGE_MODELING, PROMPT_COMPLETION), "SFTTrainer",
                 hint="Preference data can be used for SFT on the chosen answers by renaming 'chosen' to 'completion'.")
    if args.assistant_only_loss and not fmt.conversational:
        raise DatasetFormatError(
            "assistant_only_loss=True needs conversational data (a 'messages' column, or 'prompt'/'completion' as "
            f"message lists), but the {name} dataset is {fmt}. Use completion_only_loss for prompt-completion text."
        )
    if args.completion_only_loss and fmt.kind != PROMPT_COMPLETION:
        raise DatasetFormatError(
            f"completion_only_loss=True needs prompt-completion data; the {name} dataset is {fmt}. "
            "For conversations use assistant_only_loss=True."
        )


def _eos_token_id(tokenizer, args: SFTConfig) -> int | None:
    """The id of ``args.eos_token`` (default: the tokenizer's EOS)."""
    if args.eos_token is None:
        return tokenizer.eos_token_id
    eos_id = tokenizer.convert_tokens_to_ids(args.eos_token)
    if eos_id is None or eos_id == tokenizer.unk_token_id:
        raise ValueError(f"eos_token {args.eos_token!r} is not in the tokenizer's vocabulary.")
    return eos_id
