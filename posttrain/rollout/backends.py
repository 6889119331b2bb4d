"""Rollout backends: who generates the completions of the online trainers.

A backend turns prompt token ids into :class:`~posttrain.rollout.Generations` and keeps the weights it samples
with equal to the policy's. Two kinds exist:

* :class:`HFBackend` (the default): the policy itself, through :func:`posttrain.rollout.generate`
  (``model.generate``); it always samples with the current weights, so :meth:`~RolloutBackend.sync_weights` does
  nothing.
* the vLLM backends of :mod:`posttrain.rollout.vllm_backend` (``use_vllm=True``): a ``vllm.LLM`` in the trainer
  process (``vllm_mode="colocate"``) or a ``posttrain vllm-serve`` server (``vllm_mode="server"``). They hold a
  copy of the weights, which :meth:`~RolloutBackend.sync_weights` refreshes when the policy has changed.

:func:`make_backend` picks one from an :class:`~posttrain.trainers.online_base.OnlineConfig`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from .generation import Generations, generate


@runtime_checkable
class RolloutBackend(Protocol):
    """What the online trainers need from a generator."""

    def generate(self, prompt_ids: Sequence[Sequence[int]], *, num_return_sequences: int = 1,
                 max_new_tokens: int = 32, do_sample: bool = True, temperature: float = 1.0, top_p: float = 1.0,
                 top_k: int | None = 0, min_p: float | None = None, repetition_penalty: float = 1.0,
                 seed: int | None = None, return_logprobs: bool = False,
                 generation_kwargs: Mapping[str, Any] | None = None) -> Generations:
        """``num_return_sequences`` completions per prompt (consecutive, as :func:`posttrain.rollout.generate`
        lays them out), cut after the first EOS; with ``return_logprobs``, the sampler's log-prob of every
        completion token."""
        ...

    def sync_weights(self, model, version: int) -> None:
        """Make the backend sample with ``model``'s current weights. ``version`` identifies them (the trainer's
        optimizer step): a backend may skip the transfer when it already holds that version."""
        ...

    def close(self) -> None:
        """Release what the backend holds (connections, engines)."""
        ...


class HFBackend:
    """Generation with the policy itself (:func:`posttrain.rollout.generate`). ``get_model`` returns the policy
    (a callable, because a trainer may re-wrap its model after the backend is built)."""

    def __init__(self, get_model: Callable[[], Any], tokenizer, batch_size: int | None = None, fast: bool = True):
        self.get_model = get_model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.fast = fast  # generate(fast=...): posttrain's decode loop where it applies

    def generate(self, prompt_ids, *, num_return_sequences=1, return_logprobs=False, **sampling) -> Generations:
        n = len(prompt_ids) * num_return_sequences
        return generate(self.get_model(), self.tokenizer, prompt_ids=prompt_ids,
                        num_return_sequences=num_return_sequences, batch_size=self.batch_size or max(n, 1),
                        return_logprobs=return_logprobs, fast=self.fast, **sampling)

    def sync_weights(self, model, version: int) -> None:
        return None  # the policy samples with its own weights

    def close(self) -> None:
        return None


def make_backend(args, get_model: Callable[[], Any], tokenizer, accelerator=None) -> RolloutBackend:
    """The backend an online config asks for: :class:`HFBackend` unless ``args.use_vllm``, then the vLLM backend
    of ``args.vllm_mode`` (``get_model()`` is the policy; vLLM loads its ``name_or_path``)."""
    if not getattr(args, "use_vllm", False):
        return HFBackend(get_model, tokenizer, fast=getattr(args, "fast_generation", True))
    from .vllm_backend import make_vllm_backend

    return make_vllm_backend(args, get_model, tokenizer, accelerator)


__all__ = ["HFBackend", "RolloutBackend", "make_backend"]
