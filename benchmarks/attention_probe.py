"""Probe for the next SFT lever (benchmarks/archive/NOTES.md, "Seventh batch"): attention per packed sequence on CPU.

    .venv/bin/python benchmarks/attention_probe.py [--size bench] [--batches 6] [--threads 1]

One SFT training step (forward and backward, bf16 autocast, full gradient checkpointing: posttrain's defaults) of the
benchmark model on batches of 8 conversations from the benchmark's SFT data (lengths capped at 512), in three layouts:

* ``sdpa, bin-packed rows``: what posttrain runs today with sdpa. The conversations are bin-packed into rows of at most
  512 tokens and the rows are padded to the longest one; transformers builds a block-diagonal mask from the restarting
  ``position_ids``, and sdpa computes every score of each row and masks the cross-sequence ones.
* ``per-sequence attention, one flat row``: every conversation back to back in one row, with no padding, through
  posttrain's ``per_sequence_attention`` path (``posttrain.models.attention``): each sequence is sliced out (found
  where ``position_ids`` restart) and runs sdpa with ``is_causal=True``. This is what a varlen kernel (flash attention)
  does on GPUs.
* ``per-sequence attention, bin-packed rows``: the same function on today's rows, where the padding is one more
  segment.

Prints the loss of the first two layouts on the same flat batch (they must agree to bf16 rounding) and the median
CPU seconds of a step.
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


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="bench")
    p.add_argument("--batches", type=int, default=6)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM

    from benchmarks.compare_data import prepare
    from posttrain.data import best_fit_decreasing
    from posttrain.kit import load_tokenizer
    from posttrain.models.attention import per_sequence_rows, use_per_sequence_attention

    torch.set_num_threads(a.threads)
    paths = prepare(a.size, 400, 400)
    tok = load_tokenizer()
    lengths = []
    for line in Path(paths["sft_data"]).read_text().splitlines():
        ids = tok.apply_chat_template(json.loads(line)["messages"], tokenize=True)
        lengths.append(min(len(ids["input_ids"] if hasattr(ids, "keys") else ids), 512))

    def load(per_sequence):
        model = AutoModelForCausalLM.from_pretrained(paths["causal-lm"], attn_implementation="sdpa")
        if per_sequence:
            use_per_sequence_attention(model)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return model.train()

    def packed(batch):
        rows = [[batch[i] for i in b] for b in best_fit_decreasing(batch, 512)]
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
        with per_sequence_rows(model is per_seq), torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, position_ids=pos, labels=ids).loss
            loss.backward()  # inside the context: checkpointing recomputes the forward here
        model.zero_grad(set_to_none=True)

    sdpa, per_seq = load(False), load(True)
    rng = random.Random(0)
    batches = [rng.sample(lengths, 8) for _ in range(a.batches)]
    ids, pos = flat(batches[0])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        plain = sdpa(input_ids=ids, position_ids=pos, labels=ids).loss.item()
        with per_sequence_rows():
            split = per_seq(input_ids=ids, position_ids=pos, labels=ids).loss.item()
    print("loss on one flat batch: sdpa (block-diagonal mask)", plain, "| per-sequence attention", split)
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
