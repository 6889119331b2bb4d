"""What every posttrain trainer shares, written once.

* :class:`PosttrainConfig` — ``transformers.TrainingArguments`` with defaults that run anywhere
  (``bf16`` where the hardware runs it natively, GPU or CPU; ``logging_steps=10``) and ``model_init_kwargs``.
* :class:`BaseTrainer` — a ``transformers.Trainer`` that accepts a model *name or path* as well as a
  model, loads the tokenizer, wraps the model with LoRA when given a ``peft_config``, normalises losses
  by the global number of loss tokens (so gradient accumulation and several processes give the same
  update as one big batch), and logs method metrics averaged across processes under TRL's names.

Trainers differ only in how they prepare data and compute the loss.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import warnings
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import Trainer, TrainingArguments
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from transformers.trainer_utils import enable_full_determinism, set_seed

from ..models import (check_tokenizer, disable_dropout, ensure_pad_token, load_pretrained, load_processing_class,
                      prepare_peft_model, set_chat_template, set_pad_token, unwrap)
from ..import_utils import is_liger_kernel_available
from ..models.moe import enable_aux_loss
from ..models.sharding import check_launch, destroy_process_group_at_exit, prepare_frozen
from ..data.streaming import is_streaming
from .run_dir import (OutputDirLock, TrainingDivergedError, check_fresh_output_dir, checkpoints, compare_settings,
                      last_checkpoint_note, nonfinite_parameters, publish, publish_files, run_settings, save_settings,
                      staging_dir, write_error)
from .speed import SpeedPlan, bf16_supported, cpu_has_native_bf16, has_accelerator

logger = logging.getLogger("posttrain")


def write_log(rows, output_dir: str) -> str:
    """Write a log history as ``output_dir/train_log.jsonl`` (one JSON object a line); return the path."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, "train_log.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def checkpointing_field(default: bool, why: str):
    """The ``gradient_checkpointing`` field of a config class, with its default and the reason for it."""
    return field(default=default, metadata={"help": "Recompute activations in backward instead of keeping them "
                                            f"(less memory, a few % slower). Default {'on' if default else 'off'}, "
                                            f"{why}."})


@dataclass
class PosttrainConfig(TrainingArguments):
    """Shared training arguments. Differences from ``TrainingArguments``: ``logging_steps=10`` and
    ``bf16=None`` meaning "as the launcher says" (``accelerate launch``'s ``mixed_precision``), else "on where the
    hardware runs it natively": a CUDA GPU with bf16, or a CPU-only machine whose CPU has bf16 instructions
    (measured on AVX512-BF16: 1.67x the fp32 tokens/s and 0.84x the memory for SFT, same loss curve;
    ``docs/performance.md``, "bf16 by default"). Pass ``bf16=False`` for fp32. ``gradient_checkpointing=True``, as in TRL 1.x's
    configs (PPO, XPO, Nash-MD, BCO and PRM keep TRL 0.21's ``False``): measured side by side with TRL, it costs
    posttrain 2-10% of its speed and saves 30-40% of its peak memory (``docs/performance.md``, "Gradient checkpointing");
    ``gradient_checkpointing=False`` is faster where memory is not the limit."""

    logging_steps: float = field(default=10, metadata={"help": "Log every N steps (or a fraction of the run if < 1)."})
    gradient_checkpointing: bool = checkpointing_field(True, "as in TRL 1.x")
    activation_offloading: bool = field(
        default=False,
        metadata={"help": "Keep the activations saved for backward in CPU memory (pinned) instead of the "
                  "accelerator's, moving them back as backward needs them: less accelerator memory for a copy each "
                  "way. Only has an effect with an accelerator."},
    )
    bf16: bool | None = field(
        default=None,
        metadata={"help": "bf16 mixed precision. Default: the `accelerate launch` config's mixed_precision; without "
                  "one, on if a CUDA GPU supports it (or, with no accelerator, if the CPU has native bf16) and fp16 "
                  "is off."},
    )
    model_init_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": "Keyword arguments for `from_pretrained` when the model is given as a name or path "
                  "(JSON string on the command line)."},
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Allow a model, tokenizer or processor given by name or path to run its own code (custom "
                  "modeling files on the Hub). Off: such a model is refused with a message naming this option."},
    )
    pad_token: str | None = field(
        default=None,
        metadata={"help": "The token to pad with (it must be in the tokenizer's vocabulary). Default: the tokenizer's "
                  "pad token, else its EOS token."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start a new run in an output_dir that holds another run's checkpoints (they are replaced "
                  "as this run saves). Without it, such a folder is refused unless the run resumes."},
    )
    max_nonfinite_steps: int = field(
        default=0,
        metadata={"help": "posttrain only: optimizer steps with a non-finite loss or gradient norm to skip (the "
                  "update is not applied) before training stops. Default 0: the first one stops training, which then "
                  "raises TrainingDivergedError naming the last good checkpoint; no non-finite checkpoint or model "
                  "is ever written (docs/reliability.md)."},
    )
    per_sequence_attention: bool = field(
        default=True,
        metadata={"help": "posttrain only: for an sdpa model with padding-free batches, a batch becomes one row "
                  "without padding whose attention runs sequence by sequence (as with flash attention), where that "
                  "saves more positions than the extra attention calls cost; else rows bin-packed within its longest "
                  "sequence. Measured on CPU: SFT 1.1-1.2x faster at 0.91x the peak memory, unchanged on short or "
                  "equal-length sequences (docs/performance.md, 'Attention per sequence'). False: always bin-packed rows. "
                  "Other attention kernels ignore it."},
    )

    def __post_init__(self):
        # values that cannot work fail here, naming the field, before anything is loaded
        require_positive(self, "gradient_accumulation_steps", "per_device_train_batch_size",
                         "per_device_eval_batch_size")
        if self.max_nonfinite_steps < 0:
            raise ValueError(f"max_nonfinite_steps must be >= 0, got {self.max_nonfinite_steps}.")
        if self.learning_rate < 0:
            raise ValueError(f"learning_rate must be >= 0, got {self.learning_rate}.")
        if self.max_steps == 0 or (self.max_steps < 0 and self.num_train_epochs <= 0):
            raise ValueError(f"Nothing to train: max_steps={self.max_steps}, num_train_epochs={self.num_train_epochs}. "
                             "Set max_steps > 0, or leave it at -1 and set num_train_epochs > 0.")
        if self.bf16 is None:
            # `accelerate launch` passes its config's mixed_precision on; follow it, or DeepSpeed (whose config
            # takes it) and the Trainer disagree.
            launcher = os.environ.get("ACCELERATE_MIXED_PRECISION")
            if launcher in ("no", "bf16", "fp16"):
                self.bf16 = launcher == "bf16" and not self.fp16
                self.fp16 = self.fp16 or launcher == "fp16"
            else:
                self.bf16 = bf16_supported() and not self.fp16
        if not has_accelerator():
            self.dataloader_pin_memory = False  # pinning needs an accelerator; avoid the warning on CPU
            # Without `use_cpu`, accelerate does not set up multi-process CPU training (gloo) under
            # torchrun/accelerate launch: every process would silently train alone on the same data.
            self.use_cpu = True
        if isinstance(self.model_init_kwargs, str):
            self.model_init_kwargs = json.loads(self.model_init_kwargs)
        if self.use_liger_kernel:
            check_liger()
        # transformers 5 renamed gradient_checkpointing* to activation_checkpointing* and warns on the old names; TRL's
        # (and our) configs keep the old field, so carry it to the new one here, where the new one is unset
        for old, new in (("gradient_checkpointing", "activation_checkpointing"),
                         ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs")):
            if hasattr(self, new) and getattr(self, new) is None and getattr(self, old) is not None:
                setattr(self, new, getattr(self, old))
        super().__post_init__()


def require_positive(config, *names: str) -> None:
    """Refuse a config whose fields ``names`` (each an int/float or None) hold a value below 1, naming the field."""
    for name in names:
        value = getattr(config, name)
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1 (or None where the field allows it), got {value}.")


def check_choice(name: str, value: Any, choices) -> None:
    if value not in choices:
        raise ValueError(f"Unknown {name} {value!r}; valid values: {', '.join(map(str, choices))}.")


def _splits(eval_dataset) -> list:
    """The datasets of an ``eval_dataset`` argument: none, one, or a dict's values."""
    if eval_dataset is None:
        return []
    return list(eval_dataset.values()) if isinstance(eval_dataset, dict) else [eval_dataset]


def _mixed_precision_dtype(args) -> torch.dtype | None:
    """The autocast dtype of ``args``' mixed precision (bf16/fp16), or None in full precision."""
    return torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else None


def _training_autocast(args):
    """An autocast region in ``args``' mixed precision (bf16/fp16), or a no-op."""
    dtype = _mixed_precision_dtype(args)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(args.device.type, dtype=dtype)


def check_liger() -> None:
    """``use_liger_kernel=True`` runs Liger's Triton kernels (applied to the model by Trainer: RMSNorm, RoPE, SwiGLU,
    its fused linear cross-entropy); they need the package and a CUDA GPU. Elsewhere the flag fails here instead of
    at the first forward (or silently). posttrain's own fused head takes the log-probs either way (docs/performance.md,
    "Log-probs without full-vocabulary tensors")."""
    if not is_liger_kernel_available(min_version=None):
        raise ValueError("use_liger_kernel=True needs the liger-kernel package: pip install 'posttrain[liger]' (it runs "
                         "on CUDA GPUs only). posttrain computes log-probs without full-vocabulary logits on any device "
                         "without it; leave use_liger_kernel=False.")
    if not torch.cuda.is_available():
        raise ValueError("use_liger_kernel=True: Liger's kernels are Triton kernels and need a CUDA GPU; none is "
                         "available. posttrain's own fused output head already computes log-probs in chunks without "
                         "full-vocabulary logits on this device; leave use_liger_kernel=False.")


class BaseTrainer(Trainer):
    """Base of every posttrain trainer; see the module docstring.

    Subclasses set ``config_class`` (and ``_run_suffix``), and override the hooks
    :meth:`prepare_dataset` (turn a raw split into what the collator consumes) and :meth:`make_collator`.
    """

    config_class: type[PosttrainConfig] = PosttrainConfig
    _run_suffix = "posttrain"
    # Columns the collator needs; the Trainer must not drop them as "unused by the model".
    _input_columns: tuple[str, ...] = ("input_ids", "attention_mask", "labels", "position_ids")
    # Our compute_loss already divides by the number of loss items in the whole accumulated batch.
    loss_is_scaled_for_ga = True

    def __init__(self, model, args: PosttrainConfig | None = None, *, processing_class=None, peft_config=None,
                 auto_class=None, train_dataset=None, eval_dataset=None, data_collator=None, **kwargs):
        self.speed = SpeedPlan()  # docs/performance.md: the allocator now, the rest as the trainer is set up
        args = self._as_config(args)
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = self.config_class(output_dir=f"{str(name).rstrip('/').split('/')[-1]}-{self._run_suffix}")
        # Seed before anything random is created here (a model loaded by name with a freshly initialised head, the
        # LoRA adapter): the Trainer seeds only after, so `seed` alone would not make those reproducible.
        enable_full_determinism(args.seed) if args.full_determinism else set_seed(args.seed)
        remote = {"trust_remote_code": True} if args.trust_remote_code else {}
        if isinstance(model, str):
            model = load_pretrained(model, auto_class, **{**remote, **(args.model_init_kwargs or {})})
        elif args.model_init_kwargs:
            raise ValueError("model_init_kwargs only applies when the model is given as a name or path.")
        if processing_class is None:
            processing_class = load_processing_class(model.config._name_or_path, **remote)
        check_tokenizer(processing_class, getattr(processing_class, "name_or_path", None) or "processing_class", model)
        if getattr(args, "chat_template_path", None):
            set_chat_template(processing_class, args.chat_template_path)
        if args.pad_token is not None:
            set_pad_token(getattr(processing_class, "tokenizer", processing_class), args.pad_token)
        ensure_pad_token(getattr(processing_class, "tokenizer", processing_class))

        self.model = model  # prepare_dataset and make_collator may look at it (Trainer sets it again)
        train_dataset = self.prepare_dataset(train_dataset, processing_class, args, "train")
        if isinstance(eval_dataset, dict):
            eval_dataset = {k: self.prepare_dataset(v, processing_class, args, k) for k, v in eval_dataset.items()}
        else:
            eval_dataset = self.prepare_dataset(eval_dataset, processing_class, args, "eval")
        self._prepared_ids = {id(d) for d in (train_dataset, *_splits(eval_dataset)) if d is not None}
        if data_collator is None:
            data_collator = self.make_collator(processing_class, args)
        if any(is_streaming(d) for d in (train_dataset, *_splits(eval_dataset))):
            self.settle_streaming(args, train=is_streaming(train_dataset))

        if peft_config is not None:
            model = prepare_peft_model(model, peft_config, args.gradient_checkpointing)
        self._metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._local_tokens = 0
        self._seen_tokens = 0.0
        super().__init__(model=model, args=args, processing_class=processing_class, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, data_collator=data_collator, **kwargs)
        # Have the Trainer count the loss items of the whole (accumulated, all-process) batch for us.
        self.model_accepts_loss_kwargs = True
        self._offload_activations = bool(args.activation_offloading) and has_accelerator()
        if args.activation_offloading and not self._offload_activations:
            warnings.warn("activation_offloading=True has no effect here: without an accelerator the activations are "
                          "in CPU memory already.", stacklevel=2)
        if hasattr(self.model, "add_model_tags"):  # on the model card the Trainer writes (a PeftModel: its base's)
            self.model.add_model_tags(["posttrain", re.sub(r"(?<=[a-z])(?=[A-Z])", "-", self._run_suffix).lower()])
        sharded = self.is_fsdp_enabled or (self.is_deepspeed_enabled and is_deepspeed_zero3_enabled())
        if (callback := self.speed.checkpointing_callback(args, sharded)) is not None:
            self.add_callback(callback)
        if (problem := check_launch(self.accelerator)) is not None:
            warnings.warn(problem, stacklevel=2)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            destroy_process_group_at_exit()  # else a gloo worker can abort at interpreter teardown (SIGABRT)

    def _as_config(self, args):
        """``args`` as this trainer's config: a plain ``TrainingArguments`` (what a TRL script may pass) becomes one
        with the same values and this trainer's defaults for the rest."""
        if args is None or isinstance(args, PosttrainConfig) or not isinstance(args, TrainingArguments):
            return args
        names = {f.name for f in dataclasses.fields(self.config_class) if f.init}
        values = {k: v for k, v in args.to_dict().items() if k in names}
        values.update({k: getattr(args, k) for k in ("hub_token",) if k in names})  # to_dict masks it
        return self.config_class(**values)

    def settle_streaming(self, args, train: bool) -> None:
        """Streamed splits (data/streaming.py; ``train``: the train split is one): each process reads its own share
        of the stream (accelerate's ``dispatch_batches=False``; dispatching from the main process fails on a
        stream's short last batch)."""
        if train and args.max_steps <= 0:
            raise ValueError("The train dataset is a stream (an IterableDataset has no length, so an epoch cannot be "
                             "counted): set max_steps to the number of optimizer steps to train.")
        if args.accelerator_config.dispatch_batches is None:
            args.accelerator_config.dispatch_batches = False
            if getattr(self, "accelerator", None) is not None:  # a stream given to evaluate() after set-up
                self.accelerator.dataloader_config.dispatch_batches = False

    # -- MoE router loss ---------------------------------------------------------------------------
    aux_loss_enabled = False  # TRL's name: whether the MoE load-balancing loss is added

    def use_router_aux_loss(self, coef: float) -> None:
        """For a Mixture-of-Experts model, add ``coef`` x the router's load-balancing loss to the loss
        (``router_aux_loss_coef`` of the configs that have it; ``models/moe.py``); ``coef=0`` turns it off."""
        self.router_aux_loss_coef = coef
        self.aux_loss_enabled = enable_aux_loss(self.model, coef)

    def add_router_aux_loss(self, loss: torch.Tensor, found: list[torch.Tensor], model) -> torch.Tensor:
        """``loss`` plus ``router_aux_loss_coef`` x the load-balancing loss of the forwards ``found`` by
        :func:`~posttrain.models.moe.collect_aux_loss`, as a mean over the optimizer step's micro-batches (divided by
        the accumulation steps while training); logged as ``aux_loss``."""
        if not found:
            return loss
        aux = torch.stack([a.float().reshape(()) for a in found]).sum()
        self.record("aux_loss", aux.detach())
        steps = self.current_gradient_accumulation_steps if model.training else 1
        return loss + self.router_aux_loss_coef * aux.to(loss.device) / steps

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        """The Trainer's ``evaluate``; a dataset given here (a raw split, a stream, or a dict of them) is prepared as
        the constructor prepares ``eval_dataset``."""
        if eval_dataset is not None and not isinstance(eval_dataset, (str, dict)) \
                and id(eval_dataset) not in self._prepared_ids:
            split = metric_key_prefix.removeprefix("eval_") if metric_key_prefix != "eval" else "eval"
            eval_dataset = self.prepare_dataset(eval_dataset, self.processing_class, self.args, split)
            self._prepared_ids.add(id(eval_dataset))
            if is_streaming(eval_dataset):
                self.settle_streaming(self.args, train=False)
        return super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)

    # -- hooks ----------------------------------------------------------------------------------
    def prepare_dataset(self, dataset, processing_class, args, split: str):
        """Turn a raw dataset split (``split`` is "train", "eval" or an eval-dict key) into model-ready rows."""
        return dataset

    def make_collator(self, processing_class, args):
        """The default collator when the user gives none (None: transformers' default)."""
        return None

    def settle_padding_free(self, collator, requested: bool | None) -> bool:
        """Lay out ``collator``'s padding-free batches for this model: one row for variable-length attention kernels
        (``flatten``), else rows bin-packed within the batch; with ``requested=None`` (the configs' default) turn
        them on where the model keeps packed sequences apart. Returns whether it does
        (:func:`~posttrain.models.packed_sequences_supported`)."""
        return self.speed.settle_padding_free(self.model, self.args, collator, requested)

    def sequence_rows(self, inputs: Mapping[str, Any]):
        """The context in which the model's forwards on ``inputs`` run: per-sequence attention for this trainer's
        one-row padding-free batches (``per_sequence_attention``; ``position_ids``, no ``attention_mask``), else
        plain sdpa (padded batches, and bin-packed rows, which the collator chooses where one row would not pay)."""
        return self.speed.rows(inputs)

    def training_step(self, model, inputs, num_items_in_batch=None):
        # the whole step: gradient checkpointing recomputes the forward inside backward (models.attention)
        offload = torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available()) if self._offload_activations \
            else contextlib.nullcontext()
        with self.sequence_rows(inputs), offload:
            loss = super().training_step(model, inputs, num_items_in_batch)
        if not bool(torch.isfinite(loss).all()):  # the Trainer syncs on this value anyway (logging_nan_inf_filter)
            self._nonfinite_loss = True
        return loss

    # -- divergence: a non-finite loss or gradient norm is never applied, saved or hidden ----------
    def _get_grad_norm(self, model, grad_norm=None):
        """The Trainer's gradient norm, computed after the gradients of an optimizer step are complete and before
        the step: where it (or the step's loss) is not finite, the step is skipped, counted, and training stops
        once more than ``max_nonfinite_steps`` were (:class:`TrainingDivergedError` at the end of ``train()``)."""
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        bad = getattr(self, "_nonfinite_loss", False)
        # fp16 with a gradient scaler: inf gradients are the scaler's business (it skips the step and rescales)
        if self.accelerator.scaler is None and grad_norm is not None:
            bad = bad or not bool(torch.isfinite(torch.as_tensor(grad_norm, dtype=torch.float64)).all())
        if self.accelerator.num_processes > 1:  # every process must take the same decision
            flag = torch.tensor([float(bad)], device=self.args.device)
            bad = bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)
        self._nonfinite_loss = False
        self._skip_optimizer_step = bad
        if bad:
            self._nonfinite_steps = getattr(self, "_nonfinite_steps", 0) + 1
            self._guard_optimizer()
            step = self.state.global_step + 1
            if self._nonfinite_steps > self.args.max_nonfinite_steps:
                self._diverged_at = step
                self.control.should_training_stop = True
            logger.warning(
                "Step %d: the loss or gradient norm is not finite (grad_norm=%s); the update is skipped (%d of "
                "max_nonfinite_steps=%d).", step, grad_norm, self._nonfinite_steps, self.args.max_nonfinite_steps)
        return grad_norm

    def _guard_optimizer(self) -> None:
        """Make the optimizer's ``step`` a no-op while ``_skip_optimizer_step`` is set (once per optimizer). Under
        DeepSpeed the engine steps inside backward, so a skipped step is not possible: training stops instead and
        the save guard (:meth:`save_model`) refuses non-finite weights."""
        opt = self.optimizer
        if opt is None or getattr(opt, "_posttrain_guarded", False):
            return
        real_step = opt.step

        def step(*args, **kwargs):
            if self._skip_optimizer_step:
                self._skip_optimizer_step = False
                return None
            return real_step(*args, **kwargs)

        opt.step = step
        opt._posttrain_guarded = True

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """``Trainer.train`` with the run-folder guarantees of :mod:`.run_dir`: one run per ``output_dir`` (a lock),
        no new run over another's checkpoints unless ``overwrite_output_dir``, ``resume_from_checkpoint=True`` (or
        the string "true", as a command line gives it) resuming from the newest complete checkpoint with a warning
        for changed settings, and :class:`TrainingDivergedError` when training stopped on non-finite values."""
        if isinstance(resume_from_checkpoint, str) and resume_from_checkpoint.lower() in ("true", "false"):
            resume_from_checkpoint = True if resume_from_checkpoint.lower() == "true" else None
        self._diverged_at = None
        self._nonfinite_steps = 0
        output_dir = self.args.output_dir
        lock = OutputDirLock(output_dir) if self.args.should_save else contextlib.nullcontext()
        with lock:
            if self.args.should_save:
                check_fresh_output_dir(output_dir, bool(resume_from_checkpoint), self.args.overwrite_output_dir)
            checkpoint = None
            if resume_from_checkpoint:
                checkpoint = (resume_from_checkpoint if isinstance(resume_from_checkpoint, str)
                              else (checkpoints(output_dir) or [None])[-1])
                if checkpoint is None:
                    raise ValueError(f"No valid checkpoint found in output directory ({output_dir}).")
                if self.args.should_save:
                    logger.warning("Resuming from %s.", checkpoint)
                    compare_settings(checkpoint, run_settings(self.args, self.train_dataset))
            self._before_train(checkpoint)
            output = super().train(checkpoint, *args, **kwargs)
        if self._diverged_at is not None:
            raise TrainingDivergedError(
                f"Training stopped at step {self._diverged_at}: the loss or gradient norm was not finite (NaN/inf) "
                f"{self._nonfinite_steps} time(s), more than max_nonfinite_steps={self.args.max_nonfinite_steps}; "
                "that update was not applied and no model was saved after it. "
                f"{last_checkpoint_note(self.args.output_dir)} Lower the learning rate, check the data, or use fp32/bf16 "
                "instead of fp16.")
        return output

    def _before_train(self, checkpoint: str | None) -> None:
        """Called by :meth:`train` once the checkpoint to resume from (or None) is known, before the Trainer's loop:
        where a trainer restores state of its own or prepares data that needs the untrained model."""

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The Trainer's ``save_model``, refusing weights that hold NaN or inf. A final model (not a checkpoint, which
        :meth:`_save_checkpoint` stages whole) is written into a staging folder first and its files moved into
        ``output_dir`` when all are written, so a kill or a full disk never leaves a half-written model."""
        target = output_dir or self.args.output_dir
        bad = nonfinite_parameters(self.model)
        if bad:
            raise TrainingDivergedError(
                f"Refusing to save to {target}: {len(bad)} parameter tensor(s) hold NaN or inf (first: {bad[0]}). "
                f"{last_checkpoint_note(self.args.output_dir)}")
        if _internal_call:
            return super().save_model(output_dir, _internal_call)
        staged = staging_dir(target) + "-model"
        self._staged_write(lambda: super(BaseTrainer, self).save_model(staged, _internal_call), staged, target,
                           publish_files)

    def _staged_write(self, write, staged: str, target: str, move) -> None:
        """Run ``write`` (which fills ``staged``) on every process, then have the main process ``move`` the complete
        folder to ``target``; on failure remove ``staged`` and raise :class:`~.run_dir.CheckpointWriteError`."""
        main = self.args.should_save
        if main:
            shutil.rmtree(staged, ignore_errors=True)  # left by a killed run
        self.accelerator.wait_for_everyone()
        try:
            write()
        except TrainingDivergedError:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        except (OSError, RuntimeError) as err:
            error = write_error(err, target, staged, last_checkpoint_note(self.args.output_dir))
            shutil.rmtree(staged, ignore_errors=True)
            raise error from err
        self.accelerator.wait_for_everyone()
        if main:
            move(staged, target)
        self.accelerator.wait_for_everyone()

    def _save_checkpoint(self, model, trial):
        """The Trainer's checkpoint, written whole into a staging folder and renamed to ``checkpoint-N`` when complete
        (with :data:`~.run_dir.SETTINGS_NAME`, the settings a resume compares); then older checkpoints rotate out."""
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        run_dir = self._get_output_dir(trial=trial)
        staging = staging_dir(run_dir)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"

        def write():
            self._get_output_dir = lambda trial=None: staging  # the Trainer writes staging/checkpoint-N
            try:
                super(BaseTrainer, self)._save_checkpoint(model, trial)
            finally:
                del self._get_output_dir
            if self.args.should_save:
                save_settings(os.path.join(staging, name), run_settings(self.args, self.train_dataset))

        def move(staged, target):
            best = self.state.best_model_checkpoint
            if best and best.startswith(staging):  # the Trainer named the staged path
                self.state.best_model_checkpoint = os.path.join(run_dir, os.path.basename(best))
            publish(os.path.join(staged, name), target)
            shutil.rmtree(staged, ignore_errors=True)
            from transformers.trainer_utils import rotate_checkpoints

            rotate_checkpoints(output_dir=run_dir, save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=False)

        self._staged_write(write, staging, os.path.join(run_dir, name), move)

    def _issue_warnings_after_load(self, load_result) -> None:
        """The Trainer's report of missing keys after loading a checkpoint, without the weights tied to another
        (an output head tied to the input embedding is saved once, under the embedding's name)."""
        model = unwrap(self.model)
        by_tensor: dict[int, list[str]] = defaultdict(list)
        for name, param in model.named_parameters(remove_duplicate=False):
            by_tensor[id(param)].append(name)
        missing = set(load_result.missing_keys)
        tied = {n for names in by_tensor.values() if len(names) > 1 and not set(names) <= missing
                for n in names if n in missing}
        if tied:
            model.tie_weights()
            load_result = type(load_result)([k for k in load_result.missing_keys if k not in tied],
                                            load_result.unexpected_keys)
        super()._issue_warnings_after_load(load_result)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        with self.sequence_rows(inputs):
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)

    # -- models that are only evaluated --------------------------------------------------------
    def prepare_frozen_model(self, model: torch.nn.Module, *, no_dropout: bool = False,
                             autocast_only: bool = False) -> torch.nn.Module:
        """Make ``model`` (a reference policy, a teacher) evaluation-only: no gradients, eval mode, dropout off
        when ``no_dropout``; then placed by :func:`posttrain.models.sharding.prepare_frozen` (DeepSpeed: an
        inference engine of its own; FSDP: prepared by accelerate; else this process's device). Returns the model
        to keep. ``autocast_only``: the caller runs it only inside :meth:`autocast_region` and never reads or writes
        its weights, so under bf16/fp16 its linear layers are stored in that precision
        (:func:`posttrain.models.loading.store_linears_in`: the same outputs, half their memory, no casts). Pass it
        only for a model the trainer made itself (loaded from a name/path, or copied from the policy): an object the
        user handed over keeps its dtype, since they may still call it outside the autocast region."""
        from accelerate.utils import DistributedType

        enable_aux_loss(model, 0.0)  # a MoE model that only scores need not compute its router's loss
        trained = getattr(self, "model", None)
        if trained is not None:
            trained_ids = {id(p) for p in unwrap(trained).parameters()}
            if any(id(p) in trained_ids for p in model.parameters()):
                raise ValueError(
                    f"A frozen model ({type(unwrap(model)).__name__}: a reference, teacher, judge or reward model) is, or "
                    "shares parameters with, the model being trained; freezing it would stop their training. Pass a "
                    "separate copy (e.g. load it again from the same path).")
        model.requires_grad_(False)
        model.eval()
        if no_dropout:
            disable_dropout(model)
        # placed by prepare_frozen (ZeRO-3: an inference engine of its own, partitioned); the speed plan adds
        # per-sequence attention and, outside DeepSpeed/FSDP (which own the weights' storage), bf16/fp16 storage
        sharded = self.accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP)
        return self.speed.prepare_frozen(model, lambda m: prepare_frozen(m, self.accelerator),
                                         _mixed_precision_dtype(self.args), autocast_only and not sharded)

    # -- data ---------------------------------------------------------------------------------
    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = list(self._input_columns)

    @property
    def tokenizer_(self):
        pc = self.processing_class
        return getattr(pc, "tokenizer", pc)

    # -- loss normalisation: the one place (docs/architecture.md, "Loss normalisation") --------------
    def reduce_loss(self, total: torch.Tensor, count: int | torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
        """This micro-batch's share of the optimizer step's mean loss, from a loss summed over its items (tokens,
        sequences or pairs: ``total``) and the number of those items here (``count``).

        While training with ``num_items_in_batch`` (the items of the whole optimizer step: every accumulation
        micro-batch, and every process where ``average_tokens_across_devices``): ``total / num_items_in_batch``,
        times the number of processes when it spans them (the processes' gradients are averaged). Otherwise the
        micro-batch's mean ``total / count``, divided by the accumulation steps while training.
        """
        if num_items_in_batch is not None and self.model.training:
            loss = total / (num_items_in_batch.clamp(min=1) if torch.is_tensor(num_items_in_batch)
                            else max(num_items_in_batch, 1))  # a step with no item (all masked) adds nothing
            if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
                loss = loss * self.accelerator.num_processes
            return loss
        loss = total / (count.clamp(min=1) if torch.is_tensor(count) else max(int(count), 1))
        if self.model.training:
            loss = loss / self.current_gradient_accumulation_steps
        return loss

    # -- metrics --------------------------------------------------------------------------------
    @property
    def _mode(self) -> str:
        return "train" if self.model.training else "eval"

    def record(self, name: str, value: float | torch.Tensor) -> None:
        """Store a metric value for the current step; :meth:`log` averages it across steps and processes."""
        if torch.is_tensor(value):
            value = value.detach().float().mean().item()
        self._metrics[self._mode][name].append(float(value))

    def generation_precision(self):
        """An autocast region to hold around a whole generation under bf16/fp16 mixed precision. accelerate runs
        every forward in its own autocast region, which casts each weight anew at every generated token; inside an
        enclosing region the cast weights stay cached for the whole call."""
        return _training_autocast(self.args)

    def autocast_region(self):
        """The autocast region of the training precision (bf16/fp16 mixed precision; else none): what accelerate
        wraps the trained model's forward in, for forwards of other models (a frozen reference) and for regions
        around several forwards."""
        return _training_autocast(self.args)

    def record_pooled(self, name: str, values: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        """Record the (``weights``-weighted) sum and count of ``values``; :meth:`log` reports their pooled mean over
        the steps and processes since the last log (for values whose number differs between batches and processes:
        e.g. labelled steps, desirable examples)."""
        values = values.detach().float()
        if weights is not None:
            weights = weights.detach().float()
            self.record(f"_sum/{name}", (values * weights).sum() if values.numel() else 0.0)
            self.record(f"_count/{name}", float(weights.sum()) if values.numel() else 0.0)
            return
        self.record(f"_sum/{name}", values.sum() if values.numel() else 0.0)
        self.record(f"_count/{name}", float(values.numel()))

    def _pool(self, stored: dict[str, list[float]]) -> None:
        """Replace the sums and counts of :meth:`record_pooled` in ``stored`` by their pooled means."""
        names = sorted(k[len("_sum/"):] for k in stored if k.startswith("_sum/"))
        if self.accelerator.num_processes > 1:  # every process must pool the same names
            from accelerate.utils import gather_object

            names = sorted({n for part in gather_object([names]) for n in part})
        if not names:
            return
        totals = torch.tensor([[sum(stored.pop(f"_sum/{n}", [])), sum(stored.pop(f"_count/{n}", []))] for n in names],
                              dtype=torch.float64, device=self.args.device)
        if self.accelerator.num_processes > 1:
            totals = self.accelerator.reduce(totals, reduction="sum")
        for n, (s, c) in zip(names, totals.tolist()):
            if c > 0:
                stored[n] = [s / c]
        self._finalize_pooled(stored)

    def _finalize_pooled(self, stored: dict[str, list[float]]) -> None:
        """Derive metrics from pooled means (each a one-item list) before they are logged."""

    def count_tokens(self, n: int | torch.Tensor) -> None:
        if self.model.training:
            self._local_tokens += int(n)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        stored = self._metrics[mode]
        self._pool(stored)
        names = sorted(stored)
        values = torch.tensor([sum(stored[k]) / max(len(stored[k]), 1) for k in names] + [float(self._local_tokens)],
                              dtype=torch.float64, device=self.args.device)
        if self.accelerator.num_processes > 1:
            values = self.accelerator.reduce(values, reduction="sum")
            values[:-1] /= self.accelerator.num_processes
        prefix = "eval_" if mode == "eval" else ""
        for k, v in zip(names, values[:-1].tolist()):
            logs[prefix + k] = v
        if mode == "train":
            self._seen_tokens += values[-1].item()
            self._local_tokens = 0
            logs["num_tokens"] = self._seen_tokens
        stored.clear()
        super().log(logs, start_time)


__all__ = ["PosttrainConfig", "BaseTrainer", "TrainingDivergedError", "bf16_supported", "check_choice",
           "cpu_has_native_bf16", "require_positive"]
