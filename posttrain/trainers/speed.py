"""The speed and memory machinery of a trainer, in one object decided when the trainer is made.

Each mechanism and the measurement behind it is in ``docs/performance.md``; this module only says *where* each one
applies, so that :class:`~posttrain.trainers.base.BaseTrainer` holds one :class:`SpeedPlan` instead of threading
them through its methods:

* **bf16 where it is native** — the configs' ``bf16=None`` default turns bf16 mixed precision on for a bf16 GPU, or
  a CPU with AVX512-BF16/AMX (:func:`bf16_supported`);
* **the allocator** — glibc's mmap threshold raised once per process (:func:`posttrain.allocator.
  raise_mmap_threshold`), before the first model is loaded;
* **padding-free layout** — whether a collator's batches are padding-free, one row (variable-length attention
  kernels) or bin-packed rows, and, with sdpa, attention per sequence on one-row batches chosen per batch
  (:meth:`SpeedPlan.settle_padding_free`, :meth:`SpeedPlan.rows`; ``models/attention.py``);
* **checkpointing that keeps attention's outputs** — a callback that switches the checkpointed layers to the
  selective policy once the Trainer has turned checkpointing on (``models/checkpointing.py``), except under
  ZeRO-3 and FSDP;
* **frozen models** — a reference or teacher runs on the same one-row batches (per-sequence attention too) and,
  when it only scores inside the autocast region, keeps its linear layers in the compute precision
  (:meth:`SpeedPlan.prepare_frozen`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from transformers import TrainerCallback

from ..allocator import raise_mmap_threshold
from ..models import packed_sequences_supported, varlen_attention
from ..models.attention import call_cost, per_sequence_rows, use_per_sequence_attention
from ..models.checkpointing import keep_attention_outputs
from ..models.loading import store_linears_in


def has_accelerator() -> bool:
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


def bf16_supported() -> bool:
    """bf16 mixed precision is the better default here: a CUDA GPU that supports it, or, on a machine without
    any accelerator, a CPU with native bf16 (see :func:`cpu_has_native_bf16`)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return not has_accelerator() and cpu_has_native_bf16()


class KeepAttentionOutputs(TrainerCallback):
    """At the start of every ``train()``, after the Trainer has turned checkpointing on (with fresh checkpointing
    functions), make the checkpointed layers keep attention's outputs (:func:`models.checkpointing.
    keep_attention_outputs`)."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is not None:
            keep_attention_outputs(model)


class SpeedPlan:
    """See the module docstring. ``per_sequence``: per-sequence attention is in effect for this trainer's one-row
    padding-free batches (set by :meth:`settle_padding_free`)."""

    def __init__(self):
        raise_mmap_threshold()
        self.per_sequence = False

    def settle_padding_free(self, model, args, collator, requested: bool | None) -> bool:
        """Lay out ``collator``'s padding-free batches for ``model``: one row for variable-length attention kernels
        (``flatten``), else rows bin-packed within the batch; with ``requested=None`` (the configs' default) turn
        them on where the model keeps packed sequences apart. Returns whether it does
        (:func:`~posttrain.models.packed_sequences_supported`)."""
        supported = packed_sequences_supported(model)
        if requested is None:
            collator.padding_free = collator.padding_free or supported
        # sdpa models with padding-free batches: attention per sequence on one row (models.attention)
        self.per_sequence = bool(args.per_sequence_attention and collator.padding_free and supported
                                 and use_per_sequence_attention(model))
        collator.flatten = varlen_attention(model)
        if self.per_sequence and hasattr(collator, "per_sequence_cost"):
            collator.length_buckets = True  # bounded row widths (data.collators.row_width)
            collator.per_sequence_cost = call_cost(model)  # one row only where it saves more than it costs
        return supported

    def rows(self, inputs: Mapping[str, Any]):
        """The context in which the model's forwards on ``inputs`` run: per-sequence attention for one-row
        padding-free batches (``position_ids``, no ``attention_mask``), else plain sdpa (padded batches, and
        bin-packed rows, which the collator chooses where one row would not pay)."""
        one_row = (self.per_sequence and isinstance(inputs, Mapping) and "attention_mask" not in inputs
                   and "position_ids" in inputs and getattr(inputs.get("input_ids"), "shape", (0,))[0] == 1)
        return per_sequence_rows(one_row)

    @staticmethod
    def checkpointing_callback(args, sharded: bool) -> TrainerCallback | None:
        """The callback that makes checkpointing keep attention's outputs, or None: without checkpointing, or when
        parameters are gathered inside the checkpointed region (``sharded``: ZeRO-3, FSDP), whose collectives the
        selective policy's op-by-op replay cannot match ("encountered during backward but not found in storage")."""
        return KeepAttentionOutputs() if args.gradient_checkpointing and not sharded else None

    def prepare_frozen(self, model: torch.nn.Module, place, compute_dtype: torch.dtype | None,
                       store_in_compute_dtype: bool) -> torch.nn.Module:
        """A frozen model (reference, teacher) placed by ``place``: with per-sequence attention when the trained
        model has it (it runs on the same one-row batches), and with ``store_in_compute_dtype`` its linear layers
        stored in the autocast dtype (the same outputs under autocast, half their memory, no casts)."""
        if self.per_sequence:
            use_per_sequence_attention(model)
        model = place(model)
        if store_in_compute_dtype and compute_dtype is not None:
            store_linears_in(model, compute_dtype)
        return model


__all__ = ["KeepAttentionOutputs", "SpeedPlan", "bf16_supported", "cpu_has_native_bf16", "has_accelerator"]
