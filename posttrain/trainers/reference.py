"""The reference policy: where a trainer's reference log-probs come from, decided once.

Every trainer with a reference (DPO, KTO, BCO; GRPO, RLOO, PPO, Online DPO, XPO, Nash-MD) holds one
:class:`ReferencePolicy`, built when the trainer is made, and runs the reference through it:

* a separate frozen **model** kept in memory: the one the user passed (an object, or a name/path loaded with
  :func:`posttrain.models.load_frozen`) or a copy of the initial policy; prepared by
  :meth:`BaseTrainer.prepare_frozen_model` and run in eval mode inside the training step's autocast region, so its
  log-probs are in the precision of the policy's they are compared with;
* the policy with its peft **adapter** disabled (LoRA: no copy at all);
* the **initial policy** itself, valid only until its first update (the offline trainers use it, when there is no
  separate model or adapter, to precompute the reference columns before training, ``precompute_ref_log_probs``);
* **none**: no reference (reference-free losses, ``beta = 0``).

Precomputed columns (cached under :func:`reference_cache_key`) and TR-DPO syncing (:class:`SyncRefModelCallback`)
are layered on top by the offline trainers (``preference_base``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from contextlib import contextmanager, nullcontext

import torch
from transformers import TrainerCallback

from ..models import eval_mode, is_peft_model, unwrap


class ReferencePolicy:
    """See the module docstring. ``policy`` returns the trained model (it changes when the Trainer wraps it);
    ``autocast`` returns the training step's autocast context, entered around a separate model."""

    def __init__(self, policy: Callable[[], torch.nn.Module], model: torch.nn.Module | None = None, *,
                 adapter: bool = False, initial: bool = False,
                 autocast: Callable[[], object] = nullcontext):
        self._policy = policy
        self.model = model
        self.adapter = adapter and model is None
        self.initial = initial  # the policy has not been updated yet (so it is still the reference's equal)
        self._autocast = autocast

    @classmethod
    def for_policy(cls, policy: Callable[[], torch.nn.Module], model: torch.nn.Module | None, *,
                   initial: bool = False, autocast: Callable[[], object] = nullcontext) -> ReferencePolicy:
        """``model`` when given; else the policy with its adapter disabled when it has one; else, with ``initial``,
        the policy itself until training starts; else none."""
        return cls(policy, model, adapter=model is None and is_peft_model(policy()), initial=initial,
                   autocast=autocast)

    def training_started(self) -> None:
        """The policy is about to change: it can no longer stand in for the reference."""
        self.initial = False

    @contextmanager
    def active(self):
        """The module to run as the reference, in eval mode (and the autocast region for a separate model)."""
        if self.model is not None:
            with eval_mode(self.model), self._autocast():
                yield self.model
            return
        policy = unwrap(self._policy())
        if self.adapter:
            with policy.disable_adapter(), eval_mode(policy):
                yield policy
            return
        if self.initial:
            with eval_mode(policy):
                yield policy
            return
        raise ValueError(
            "Cannot compute reference log-probs for a dataset passed to evaluate() (or any dataset without precomputed "
            "reference columns) once training has started: there is no separate reference model or peft adapter, and "
            "the trained policy no longer stands in for the reference (precompute_ref_log_probs=True). Give every "
            "dataset to the trainer before training, or pass ref_model=.")


def reference_cache_key(dataset, reference: torch.nn.Module, trainer_name: str) -> str:
    """A key of a tokenized dataset's content, of the reference model and of the trainer, for the file name of its
    precomputed reference log-probs (``precompute_ref_log_probs``): a changed dataset or reference is a new file."""
    h = hashlib.sha256()
    ds = dataset.flatten_indices() if getattr(dataset, "_indices", None) is not None else dataset
    table = ds.data.table
    for col in sorted(table.column_names):
        h.update(col.encode())
        for chunk in table.column(col).chunks:
            for buf in chunk.buffers():
                if buf is not None:
                    h.update(memoryview(buf))
    h.update(str(getattr(getattr(reference, "config", None), "_name_or_path", type(reference).__name__)).encode())
    # ds_numel: a ZeRO-3 partition's full size (its local numel() is 0), so the key does not depend on the set-up
    h.update(str(sum(getattr(p, "ds_numel", p.numel()) for n, p in reference.named_parameters()
                     if "lora_" not in n)).encode())
    h.update(trainer_name.encode())
    return h.hexdigest()[:20]


class SyncRefModelCallback(TrainerCallback):
    """TR-DPO (Gorbatovski et al. 2024): every ``ref_model_sync_steps`` optimizer steps, soft-update the
    reference policy, ``ref = alpha * policy + (1 - alpha) * ref`` (``alpha = ref_model_mixup_alpha``)."""

    def __init__(self, trainer):
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


__all__ = ["ReferencePolicy", "SyncRefModelCallback", "reference_cache_key"]
