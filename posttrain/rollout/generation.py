"""Batched generation from a policy: left-padded prompts, KV cache, stop at EOS.

This is the one generation loop of the library; trainers and evaluation call it rather than writing
their own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..data.collators import pad_sequences
from ..data.formats import is_conversational_value
from ..data.tokenize import chat_template_ids
from ..models.wrappers import unwrap
from ..models.sharding import gathered_parameters, is_zero3_partitioned
from .decode import decode_chunk


@dataclass
class Generations:
    """Completions of :func:`generate`, one entry per completion (``num_return_sequences`` per prompt,
    consecutive: entry ``prompt * k + j`` is sample ``j`` of prompt ``prompt``)."""

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    texts: list[str]
    logprobs: list[list[float]] | None = None
    """With ``return_logprobs=True``: for every completion token, its log-probability under the distribution it
    was drawn from (the model's logits after temperature, top-k, top-p, min-p and repetition penalty)."""
    loss_masks: list[list[int]] | None = None
    """Multi-turn rollouts (:mod:`posttrain.rollout.agent`): 1 on each completion's sampled tokens, 0 on the tokens
    inserted between its turns (tool results, observations); None: every token was sampled."""
    messages: list[list[dict]] | None = None
    """Multi-turn rollouts: each completion as its messages (assistant turns and inserted messages)."""
    truncated: list[bool] | None = None
    """Multi-turn rollouts: whether each episode ran out of its token budget (None: a completion without EOS is)."""


def encode_prompts(tokenizer, prompts: Sequence) -> list[list[int]]:
    """Token ids of standard (string) or conversational (message list) prompts."""
    out = []
    for p in prompts:
        if is_conversational_value(p):
            out.append(chat_template_ids(tokenizer, p, add_generation_prompt=True))
        else:
            out.append(tokenizer(p)["input_ids"])
    return out


def _partitioned_across_processes(model) -> bool:
    """True for a ZeRO-3 partitioned module when several processes run: its forward passes are collective."""
    return (isinstance(model, torch.nn.Module) and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1 and is_zero3_partitioned(unwrap(model)))


def transformers_chunk(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, gen_kwargs: Mapping[str, Any],
                       return_logprobs: bool):
    """The engine that covers every model and option: ``model.generate`` on one left-padded chunk of prompts; the
    new tokens and, with ``return_logprobs``, their log-probs (as :func:`~posttrain.rollout.decode.decode_chunk`)."""
    with gathered_parameters(model):  # ZeRO-3: whole weights once per chunk, not re-gathered every token
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, **gen_kwargs)
    return _new_tokens(out, input_ids.shape[1], return_logprobs)


def _new_tokens(out, prompt_len: int, return_logprobs: bool):
    """The new tokens (B, T) of ``model.generate``'s output and, with ``return_logprobs``, the log-prob (B, T) of
    each under the processed (sampling) distribution of its step."""
    sequences = out.sequences if return_logprobs else out
    new = sequences[:, prompt_len:]
    if not return_logprobs:
        return new, None
    if not out.scores:
        return new, new.new_zeros((new.shape[0], 0), dtype=torch.float32)
    return new, torch.stack([torch.log_softmax(scores.float(), dim=-1).gather(-1, new[:, t : t + 1]).squeeze(-1)
                             for t, scores in enumerate(out.scores)], dim=1)


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: Sequence | None = None,
    *,
    prompt_ids: Sequence[Sequence[int]] | None = None,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int | None = 0,
    min_p: float | None = None,
    repetition_penalty: float = 1.0,
    num_return_sequences: int = 1,
    batch_size: int = 64,
    seed: int | None = None,
    return_logprobs: bool = False,
    generation_kwargs: Mapping[str, Any] | None = None,
    mixture_ref: Any = None,
    mixture_coef: float = 0.0,
    fast: bool = True,
) -> Generations:
    """Generate ``num_return_sequences`` completions per prompt; completions are cut after the first EOS (kept in
    ``completion_ids``, out of the text).

    Prompts are strings or message lists (rendered with the chat template and the generation prompt), or give
    their token ids as ``prompt_ids`` instead. Sampling options (``temperature``, ``top_p``, ``top_k`` (0 or
    None: off), ``min_p``, ``repetition_penalty``) apply when ``do_sample=True``; ``repetition_penalty`` applies
    to greedy decoding too. ``generation_kwargs`` go to ``model.generate`` unchanged. ``seed`` makes sampling
    reproducible without changing the global random state afterwards.

    With ``mixture_ref`` (a reference policy, see :mod:`posttrain.rollout.mixture`) tokens are drawn from the
    token-level geometric mixture ``softmax((1 - mixture_coef) log pi + mixture_coef log pi_ref)`` of ``model``
    and the reference (Nash-MD), the sampling options applying to the mixture.

    ``fast`` (default): Llama/Qwen2 models on CPU generate with posttrain's own decode loop
    (:mod:`posttrain.rollout.decode`: the same tokens and log-probs up to float rounding, about 1.6x faster per token
    at batch 8), other models and options (repetition penalty, mixture sampling, options ``model.generate`` has and
    the loop lacks) with ``model.generate``; ``fast=False``: always ``model.generate``.
    """
    if (prompts is None) == (prompt_ids is None):
        raise ValueError("generate needs exactly one of prompts and prompt_ids.")
    if num_return_sequences < 1:
        raise ValueError(f"num_return_sequences must be >= 1, got {num_return_sequences}.")
    base = unwrap(model)
    was_training = base.training
    base.eval()
    device = next(base.parameters()).device
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    ids = encode_prompts(tokenizer, prompts) if prompt_ids is None else [list(p) for p in prompt_ids]
    if any(not p for p in ids):
        raise ValueError("generate got an empty prompt (no tokens); every prompt needs at least one token.")
    if num_return_sequences > 1:
        ids = [p for p in ids for _ in range(num_return_sequences)]
    generator_state = None
    if seed is not None:
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
    completions: list[list[int]] = []
    logprobs: list[list[float]] | None = [] if return_logprobs else None
    try:
        for start in range(0, len(ids), batch_size):
            chunk = ids[start : start + batch_size]
            input_ids = pad_sequences(chunk, pad, side="left").to(device)
            attention_mask = pad_sequences([[1] * len(c) for c in chunk], 0, side="left").to(device)
            kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=pad,
                                          eos_token_id=eos)
            if do_sample:
                kwargs.update(temperature=temperature, top_p=top_p, top_k=top_k or 0)
                if min_p:
                    kwargs["min_p"] = min_p
            else:
                kwargs.update(temperature=None, top_p=None, top_k=None)
            if repetition_penalty != 1.0:
                kwargs["repetition_penalty"] = repetition_penalty
            if return_logprobs:
                kwargs.update(return_dict_in_generate=True, output_scores=True)
            kwargs.update(generation_kwargs or {})
            if mixture_ref is not None:
                from transformers import LogitsProcessorList

                from .mixture import GeometricMixtureLogitsProcessor

                processor = GeometricMixtureLogitsProcessor(mixture_ref, mixture_coef, attention_mask)
                kwargs["logits_processor"] = LogitsProcessorList([*kwargs.get("logits_processor", []), processor])
                if _partitioned_across_processes(mixture_ref):
                    # transformers keeps a ZeRO-3 process whose completions have all ended stepping the model
                    # (synced_gpus) but skips its logits processors, so the reference in there would gather its
                    # layers without that process and wait forever: no process stops at EOS (cut below)
                    kwargs["eos_token_id"] = None
            # the engines, tried in order: posttrain's loop (fast), where it covers the model and the request; then
            # transformers' model.generate, which covers everything
            result = None
            if fast and mixture_ref is None:
                result = decode_chunk(base, input_ids, attention_mask, kwargs, return_logprobs)
            if result is None:
                result = transformers_chunk(base, input_ids, attention_mask, kwargs, return_logprobs)
            new, step_logps = result
            for i, row in enumerate(new.tolist()):
                if eos in row:
                    row = row[: row.index(eos) + 1]
                while row and row[-1] == pad and pad != eos:
                    row.pop()
                completions.append(row)
                if logprobs is not None:
                    logprobs.append(step_logps[i, : len(row)].tolist())
    finally:
        if generator_state is not None:
            torch.random.set_rng_state(generator_state)
        base.train(was_training)
    texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
    return Generations(prompt_ids=ids, completion_ids=completions, texts=texts, logprobs=logprobs)
