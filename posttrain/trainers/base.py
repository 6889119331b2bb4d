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
import json
import os
import warnings
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from transformers.trainer_utils import enable_full_determinism, set_seed

from ..models import (disable_dropout, ensure_pad_token, load_pretrained, load_processing_class,
                      packed_sequences_supported, prepare_peft_model, set_chat_template, unwrap, varlen_attention)
from ..allocator import raise_mmap_threshold
from ..models.attention import call_cost, per_sequence_rows, use_per_sequence_attention
from ..models.checkpointing import keep_attention_outputs
from ..models.sharding import check_launch, destroy_process_group_at_exit, prepare_frozen
from ..models.loading import store_linears_in


def _has_accelerator() -> bool:
    if torch.cuda.is_available():
        return True
    xpu = getattr(torch, "xpu", None)
    mps = getattr(torch.backends, "mps", None)
    return bool((xpu is not None and xpu.is_available()) or (mps is not None and mps.is_available()))


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (x86 AVX512-BF16 or AMX, Arm BF16): there bf16 autocast runs the
    matrix multiplications several times faster than fp32. Asks torch (private probes) and falls back to the
    kernel's CPU flags."""
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(torch.cpu, probe, None)
        try:
            if fn is not None and fn():
                return True
        except Exception:  # noqa: BLE001 - a private probe; the flags below decide
            pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    except OSError:
        pass
    return False


def write_log(rows, output_dir: str) -> str:
    """Write a log history as ``output_dir/train_log.jsonl`` (one JSON object a line); return the path."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, "train_log.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def bf16_supported() -> bool:
    """bf16 mixed precision is the better default here: a CUDA GPU that supports it, or, on a machine without
    any accelerator, a CPU with native bf16 (see :func:`cpu_has_native_bf16`)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return not _has_accelerator() and cpu_has_native_bf16()


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
    ``benchmarks/NOTES.md``). Pass ``bf16=False`` for fp32. ``gradient_checkpointing=True``, as in TRL 1.x's
    configs (PPO, XPO, Nash-MD, BCO and PRM keep TRL 0.21's ``False``): measured side by side with TRL, it costs
    posttrain 2-10% of its speed and saves 30-40% of its peak memory (``benchmarks/NOTES.md``, "Fifth batch");
    ``gradient_checkpointing=False`` is faster where memory is not the limit."""

    logging_steps: float = field(default=10, metadata={"help": "Log every N steps (or a fraction of the run if < 1)."})
    gradient_checkpointing: bool = checkpointing_field(True, "as in TRL 1.x")
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
    per_sequence_attention: bool = field(
        default=True,
        metadata={"help": "posttrain only: for an sdpa model with padding-free batches, a batch becomes one row "
                  "without padding whose attention runs sequence by sequence (as with flash attention), where that "
                  "saves more positions than the extra attention calls cost; else rows bin-packed within its longest "
                  "sequence. Measured on CPU: SFT 1.1-1.2x faster at 0.91x the peak memory, unchanged on short or "
                  "equal-length sequences (benchmarks/NOTES.md, 'Eighth batch'). False: always bin-packed rows. "
                  "Other attention kernels ignore it."},
    )

    def __post_init__(self):
        if self.bf16 is None:
            # `accelerate launch` passes its config's mixed_precision on; follow it, or DeepSpeed (whose config
            # takes it) and the Trainer disagree.
            launcher = os.environ.get("ACCELERATE_MIXED_PRECISION")
            if launcher in ("no", "bf16", "fp16"):
                self.bf16 = launcher == "bf16" and not self.fp16
                self.fp16 = self.fp16 or launcher == "fp16"
            else:
                self.bf16 = bf16_supported() and not self.fp16
        if not _has_accelerator():
            self.dataloader_pin_memory = False  # pinning needs an accelerator; avoid the warning on CPU
            # Without `use_cpu`, accelerate does not set up multi-process CPU training (gloo) under
            # torchrun/accelerate launch: every process would silently train alone on the same data.
            self.use_cpu = True
        if isinstance(self.model_init_kwargs, str):
            self.model_init_kwargs = json.loads(self.model_init_kwargs)
        # transformers 5 renamed gradient_checkpointing* to activation_checkpointing* and warns on the old names; TRL's
        # (and our) configs keep the old field, so carry it to the new one here, where the new one is unset
        for old, new in (("gradient_checkpointing", "activation_checkpointing"),
                         ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs")):
            if hasattr(self, new) and getattr(self, new) is None and getattr(self, old) is not None:
                setattr(self, new, getattr(self, old))
        super().__post_init__()


def check_choice(name: str, value: Any, choices) -> None:
    if value not in choices:
        raise ValueError(f"Unknown {name} {value!r}; valid values: {', '.join(map(str, choices))}.")


def _mixed_precision_dtype(args) -> torch.dtype | None:
    """The autocast dtype of ``args``' mixed precision (bf16/fp16), or None in full precision."""
    return torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else None


def _training_autocast(args):
    """An autocast region in ``args``' mixed precision (bf16/fp16), or a no-op."""
    dtype = _mixed_precision_dtype(args)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(args.device.type, dtype=dtype)


class KeepAttentionOutputs(TrainerCallback):
    """At the start of every ``train()``, after the Trainer has turned checkpointing on (with fresh checkpointing
    functions), make the checkpointed layers keep attention's outputs (:func:`models.checkpointing.
    keep_attention_outputs`)."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is not None:
            keep_attention_outputs(model)


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
        raise_mmap_threshold()
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = self.config_class(output_dir=f"{str(name).rstrip('/').split('/')[-1]}-{self._run_suffix}")
        # Seed before anything random is created here (a model loaded by name with a freshly initialised head, the
        # LoRA adapter): the Trainer seeds only after, so `seed` alone would not make those reproducible.
        enable_full_determinism(args.seed) if args.full_determinism else set_seed(args.seed)
        if isinstance(model, str):
            model = load_pretrained(model, auto_class, **(args.model_init_kwargs or {}))
        elif args.model_init_kwargs:
            raise ValueError("model_init_kwargs only applies when the model is given as a name or path.")
        if processing_class is None:
            processing_class = load_processing_class(model.config._name_or_path)
        if getattr(args, "chat_template_path", None):
            set_chat_template(processing_class, args.chat_template_path)
        ensure_pad_token(getattr(processing_class, "tokenizer", processing_class))

        self.model = model  # prepare_dataset and make_collator may look at it (Trainer sets it again)
        train_dataset = self.prepare_dataset(train_dataset, processing_class, args, "train")
        if isinstance(eval_dataset, dict):
            eval_dataset = {k: self.prepare_dataset(v, processing_class, args, k) for k, v in eval_dataset.items()}
        else:
            eval_dataset = self.prepare_dataset(eval_dataset, processing_class, args, "eval")
        if data_collator is None:
            data_collator = self.make_collator(processing_class, args)

        if peft_config is not None:
            model = prepare_peft_model(model, peft_config, args.gradient_checkpointing)
        self._metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._local_tokens = 0
        self._seen_tokens = 0.0
        self._per_sequence = False  # per_sequence_attention in effect (settle_padding_free)
        super().__init__(model=model, args=args, processing_class=processing_class, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, data_collator=data_collator, **kwargs)
        # Have the Trainer count the loss items of the whole (accumulated, all-process) batch for us.
        self.model_accepts_loss_kwargs = True
        # The recomputation keeps attention's outputs instead of running it again (models.checkpointing). Not under
        # ZeRO-3 or FSDP: they gather parameters inside the checkpointed region, with collectives that selective
        # checkpointing's op-by-op replay cannot match ("encountered during backward but not found in storage")
        if args.gradient_checkpointing and not (self.is_fsdp_enabled or (self.is_deepspeed_enabled
                                                                         and is_deepspeed_zero3_enabled())):
            self.add_callback(KeepAttentionOutputs())
        if (problem := check_launch(self.accelerator)) is not None:
            warnings.warn(problem, stacklevel=2)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            destroy_process_group_at_exit()  # else a gloo worker can abort at interpreter teardown (SIGABRT)

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
        supported = packed_sequences_supported(self.model)
        if requested is None:
            collator.padding_free = collator.padding_free or supported
        # sdpa models with padding-free batches: attention per sequence on one row (models.attention)
        self._per_sequence = bool(getattr(self.args, "per_sequence_attention", False) and collator.padding_free
                                  and supported and use_per_sequence_attention(self.model))
        collator.flatten = varlen_attention(self.model)
        if self._per_sequence and hasattr(collator, "per_sequence_cost"):
            collator.length_buckets = True  # bounded row widths (data.collators.row_width)
            collator.per_sequence_cost = call_cost(self.model)  # one row only where it saves more than it costs
        return supported

    def sequence_rows(self, inputs: Mapping[str, Any]):
        """The context in which the model's forwards on ``inputs`` run: per-sequence attention for this trainer's
        one-row padding-free batches (``per_sequence_attention``; ``position_ids``, no ``attention_mask``), else
        plain sdpa (padded batches, and bin-packed rows, which the collator chooses where one row would not pay)."""
        one_row = (self._per_sequence and isinstance(inputs, Mapping) and "attention_mask" not in inputs
                   and "position_ids" in inputs and getattr(inputs.get("input_ids"), "shape", (0,))[0] == 1)
        return per_sequence_rows(one_row)

    def training_step(self, model, inputs, num_items_in_batch=None):
        # the whole step: gradient checkpointing recomputes the forward inside backward (models.attention)
        with self.sequence_rows(inputs):
            return super().training_step(model, inputs, num_items_in_batch)

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
        if self._per_sequence:  # it runs on the same one-row batches as the trained model (models.attention)
            use_per_sequence_attention(model)
        model = prepare_frozen(model, self.accelerator)  # ZeRO-3: an inference engine of its own, partitioned
        dtype = _mixed_precision_dtype(self.args)
        if autocast_only and dtype is not None and self.accelerator.distributed_type not in (
                DistributedType.DEEPSPEED, DistributedType.FSDP):
            store_linears_in(model, dtype)
        return model

    # -- data ---------------------------------------------------------------------------------
    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = list(self._input_columns)

    @property
    def tokenizer_(self):
        pc = self.processing_class
        return getattr(pc, "tokenizer", pc)

    # -- loss normalisation -------------------------------------------------------------------
    def scale_loss(self, loss_sum: torch.Tensor, local_count: int | torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
        """Turn a summed per-token loss into this process's share of the global token-mean loss."""
        if num_items_in_batch is not None:
            loss = loss_sum / num_items_in_batch
            if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
                loss = loss * self.accelerator.num_processes
            return loss
        loss = loss_sum / max(int(local_count), 1)
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


__all__ = ["PosttrainConfig", "BaseTrainer", "bf16_supported", "check_choice", "cpu_has_native_bf16"]
