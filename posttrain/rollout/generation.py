"""Batched generation from a policy: left-padded prompts, KV cache, stop at EOS.

This is the one generation loop of the library; trainers and evaluation call it rather than writing
their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..data.collators import pad_sequences
from ..data.formats import is_conversational_value
from ..data.tokenize import chat_template_ids
from ..models.heads import unwrap


@dataclass
class Generations:
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    texts: list[str]


def encode_prompts(tokenizer, prompts: Sequence) -> list[list[int]]:
    """Token ids of standard (string) or conversational (message list) prompts."""
    out = []
    for p in prompts:
        if is_conversational_value(p):
            out.append(chat_template_ids(tokenizer, p, add_generation_prompt=True))
        else:
            out.append(tokenizer(p)["input_ids"])
    return out


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: Sequence,
    *,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    batch_size: int = 64,
    seed: int | None = None,
) -> Generations:
    """Generate one completion per prompt; completions are cut after the first EOS (kept out of the text)."""
    base = unwrap(model)
    was_training = base.training
    base.eval()
    device = next(base.parameters()).device
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    prompt_ids = encode_prompts(tokenizer, prompts)
    generator_state = None
    if seed is not None:
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
    completions: list[list[int]] = []
    try:
        for start in range(0, len(prompt_ids), batch_size):
            chunk = prompt_ids[start : start + batch_size]
            input_ids = pad_sequences(chunk, pad, side="left").to(device)
            attention_mask = pad_sequences([[1] * len(c) for c in chunk], 0, side="left").to(device)
            kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=pad, eos_token_id=eos)
            if do_sample:
                kwargs.update(temperature=temperature, top_p=top_p, top_k=top_k)
            else:
                kwargs.update(temperature=None, top_p=None, top_k=None)
            out = base.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
            for row in out[:, input_ids.shape[1]:].tolist():
                if eos in row:
                    row = row[: row.index(eos) + 1]
                while row and row[-1] == pad and pad != eos:
                    row.pop()
                completions.append(row)
    finally:
        if generator_state is not None:
            torch.random.set_rng_state(generator_state)
        base.train(was_training)
    texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
    return Generations(prompt_ids=prompt_ids, completion_ids=completions, texts=texts)
