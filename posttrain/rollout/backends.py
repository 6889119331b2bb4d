"""Rollout backends: who generates the completions of the online trainers.

A backend turns prompt token ids into :class:`~posttrain.rollout.Generations` and keeps the weights it samples
with equal to the policy's. Three exist:

* :class:`DecodeBackend` (the default, ``fast_generation=True``): the policy itself, through posttrain's own decode
  loop (:mod:`posttrain.rollout.decode`) where it covers the model and the request (Llama/Qwen2-style models on CPU),
  else through transformers;
* :class:`HFBackend` (``fast_generation=False``): the policy itself, through transformers' ``model.generate``.
  Both sample with the current weights, so :meth:`~RolloutBackend.sync_weights` does nothing;
* the vLLM backends of :mod:`posttrain.rollout.vllm_backend` (``use_vllm=True``): a ``vllm.LLM`` in the trainer
  process (``vllm_mode="colocate"``) or a ``posttrain vllm-serve`` server (``vllm_mode="server"``). They hold a
  copy of the weights, which :meth:`~RolloutBackend.sync_weights` refreshes when the policy has changed.

All but vLLM go through :func:`posttrain.rollout.generate`, whose engines they choose. :func:`make_backend` picks one
from an :class:`~posttrain.trainers.online_base.OnlineConfig`.
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
    """Generation with the policy itself through transformers' ``model.generate`` (:func:`posttrain.rollout.generate`
    with ``fast=False``). ``get_model`` returns the policy (a callable, because a trainer may re-wrap its model after
    the backend is built)."""

    fast = False  # generate(fast=...): which engines generate tries

    def __init__(self, get_model: Callable[[], Any], tokenizer, batch_size: int | None = None):
        self.get_model = get_model
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    def generate(self, prompt_ids, *, num_return_sequences=1, return_logprobs=False, **sampling) -> Generations:
        n = len(prompt_ids) * num_return_sequences
        return generate(self.get_model(), self.tokenizer, prompt_ids=prompt_ids,
                        num_return_sequences=num_return_sequences, batch_size=self.batch_size or max(n, 1),
                        return_logprobs=return_logprobs, fast=self.fast, **sampling)

    def sync_weights(self, model, version: int) -> None:
        return None  # the policy samples with its own weights

    def close(self) -> None:
        return None


class DecodeBackend(HFBackend):
    """Generation with the policy itself through posttrain's decode loop (:func:`~posttrain.rollout.decode.decode_chunk`:
    the same tokens and log-probs as transformers up to float rounding, faster on CPU: docs/performance.md,
    "Generation"), and through transformers for the models and options the loop does not cover."""

    fast = True


def make_backend(args, get_model: Callable[[], Any], tokenizer, accelerator=None) -> RolloutBackend:
    """The backend an online config asks for: the vLLM backend of ``args.vllm_mode`` with ``args.use_vllm``
    (``get_model()`` is the policy; vLLM loads its ``name_or_path``), else :class:`DecodeBackend`, or
    :class:`HFBackend` with ``fast_generation=False``."""
    if not getattr(args, "use_vllm", False):
        return (DecodeBackend if getattr(args, "fast_generation", True) else HFBackend)(get_model, tokenizer)
    from .vllm_backend import make_vllm_backend

    return make_vllm_backend(args, get_model, tokenizer, accelerator)


__all__ = ["DecodeBackend", "HFBackend", "RolloutBackend", "make_backend"]
