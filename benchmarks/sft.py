"""SFT benchmark: variable-length conversational data, packing off vs on (tokens/s, peak RSS).

    python benchmarks/sft.py [--size bench] [--steps 12] [--repeats 3]

Each setting runs in a fresh process; runs alternate (A B A B ...) and the table reports medians.
`num_tokens` counts real (non-padding) input tokens, so tokens/s is useful throughput.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import median_table, run_isolated  # noqa: E402

WORKER = str(Path(__file__).with_name("sft_worker.py"))


def main(argv=None) -> str:
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="bench")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup_steps", type=int, default=2)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--max_length", type=int, default=512)
    p.add_argument("--examples", type=int, default=400)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads per run")
    a = p.parse_args(argv)
    base = dict(size=a.size, steps=a.steps, warmup_steps=a.warmup_steps, batch_size=a.batch_size,
                max_length=a.max_length, examples=a.examples, threads=a.threads)
    settings = {"padded (packing off)": dict(base, packing=False), "packing (bfd, padding-free)": dict(base, packing=True)}
    results = {name: [] for name in settings}
    for _ in range(a.repeats):
        for name, cfg in settings.items():
            results[name].append(run_isolated(WORKER, cfg))
            print(name, results[name][-1], flush=True)
    table = median_table(results, ["tokens_per_s", "peak_rss_mb", "first_loss", "last_loss"])
    print(table)
    return table


if __name__ == "__main__":
    main()
