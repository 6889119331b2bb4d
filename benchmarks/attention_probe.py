"""Probe for the next SFT lever (benchmarks/NOTES.md, "Seventh batch"): attention per packed sequence on CPU.

    .venv/bin/python benchmarks/attention_probe.py [--size bench] [--batches 6] [--threads 1]

One SFT training step (forward and backward, bf16 autocast, full gradient checkpointing: posttrain's defaults) of the
benchmark model on batches of 8 conversations from the benchmark's SFT data (lengths capped at 512), in three layouts:

* ``sdpa, bin-packed rows``: what posttrain runs today with sdpa. The conversations are bin-packed into rows of at most
  512 tokens and the rows are padded to the longest one; transformers builds a block-diagonal mask from the restarting
  ``position_ids``, and sdpa computes every score of each row and masks the cross-sequence ones.
* ``per-sequence attention, one flat row``: every conversation back to back in one row, with no padding. The attention
  function slices each sequence out (found where ``position_ids`` restart) and runs sdpa on it with ``is_causal=True``.
  This is what a varlen kernel (flash attention) does on GPUs.
* ``per-sequence attention, bin-packed rows``: the same function on today's rows, where the padding is one more
  segment.

Prints the loss of the first two layouts on the same flat batch (they must agree to bf16 rounding) and the median
CPU seconds of a step. A probe, not a feature: the attention function here handles only training forwards.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def per_sequence_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """(B, H, L, D) query/key/value of one row; sequences start where ``position_ids`` is 0."""
    import torch
    import torch.nn.functional as F

    pos = kwargs["position_ids"][0]
    starts = (pos == 0).nonzero().flatten().tolist() + [pos.numel()]
    outs = [F.scaled_dot_product_attention(query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], is_causal=True,
                                           scale=scaling, enable_gqa=True) for s, e in zip(starts[:-1], starts[1:])]
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


def bin_pack(lengths: list[int], capacity: int) -> list[list[int]]:
    rows: list[list[int]] = []
    for n in sorted(lengths, reverse=True):
        for row in rows:
            if sum(row) + n <= capacity:
                row.append(n)
                break
        else:
            rows.append([n])
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="bench")
    p.add_argument("--batches", type=int, default=6)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)

    import torch
    from transformers import AttentionInterface, AutoModelForCausalLM
    from transformers.masking_utils import AttentionMaskInterface

    from benchmarks.compare_data import prepare
    from posttrain.kit import load_tokenizer

    torch.set_num_threads(a.threads)
    AttentionInterface.register("per_sequence", per_sequence_attention)
    AttentionMaskInterface.register("per_sequence", lambda *args, **kwargs: None)
    paths = prepare(a.size, 400, 400)
    tok = load_tokenizer()
    lengths = []
    for line in Path(paths["sft_data"]).read_text().splitlines():
        ids = tok.apply_chat_template(json.loads(line)["messages"], tokenize=True)
        lengths.append(min(len(ids["input_ids"] if hasattr(ids, "keys") else ids), 512))

    def load(impl):
        model = AutoModelForCausalLM.from_pretrained(paths["causal-lm"], attn_implementation=impl)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return model.train()

    def packed(batch):
        rows = bin_pack(batch, 512)
        width = max(sum(r) for r in rows)
        pos = torch.zeros(len(rows), width, dtype=torch.long)
        for i, row in enumerate(rows):
            at = 0
            for n in row:
                pos[i, at:at + n] = torch.arange(n)
                at += n
            pos[i, at:] = torch.arange(width - at)  # the padding: one more segment
        return torch.randint(5, 1000, (len(rows), width)), pos

    def flat(batch):
        pos = torch.cat([torch.arange(n) for n in batch]).unsqueeze(0)
        return torch.randint(5, 1000, (1, pos.shape[1])), pos

    def step(model, ids, pos):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, position_ids=pos, labels=ids).loss
        loss.backward()
        model.zero_grad(set_to_none=True)

    sdpa, per_seq = load("sdpa"), load("per_sequence")
    rng = random.Random(0)
    batches = [rng.sample(lengths, 8) for _ in range(a.batches)]
    ids, pos = flat(batches[0])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        print("loss on one flat batch: sdpa (block-diagonal mask)",
              sdpa(input_ids=ids, position_ids=pos, labels=ids).loss.item(),
              "| per-sequence attention", per_seq(input_ids=ids, position_ids=pos, labels=ids).loss.item())
    arms = {"sdpa, bin-packed rows": (sdpa, packed), "per-sequence attention, one flat row": (per_seq, flat),
            "per-sequence attention, bin-packed rows": (per_seq, packed)}
    times: dict[str, list[float]] = {name: [] for name in arms}
    for batch in batches:
        for name, (model, layout) in arms.items():
            ids, pos = layout(batch)
            start = time.process_time()
            step(model, ids, pos)
            times[name].append(time.process_time() - start)
    base = statistics.median(times["sdpa, bin-packed rows"][1:])
    for name, values in times.items():
        median = statistics.median(values[1:])  # the first batch warms up
        print(f"{name}: median {median:.3f} CPU-s per step ({base / median:.2f}x)")
    print("real tokens per batch:", [sum(b) for b in batches])


if __name__ == "__main__":
    main()
