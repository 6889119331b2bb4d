"""Shared benchmark helpers: variable-length chat data, run a config in a fresh process, report medians."""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def chat_dataset(n: int, seed: int = 0, mean_words: float = 60.0):
    """Conversations with a realistic (log-normal) spread of lengths, 1-3 turns, from the kit's text generator."""
    import datasets

    from posttrain.kit.corpus import plain_sentence

    rng = random.Random(seed)

    def text(words: int) -> str:
        out: list[str] = []
        while sum(len(s.split()) for s in out) < words:
            out.append(plain_sentence(rng))
        return " ".join(out)

    rows = []
    for _ in range(n):
        messages = []
        for _turn in range(rng.randint(1, 3)):
            messages.append({"role": "user", "content": text(max(3, int(rng.lognormvariate(0, 0.8) * mean_words / 3)))})
            messages.append({"role": "assistant", "content": text(max(3, int(rng.lognormvariate(0, 0.9) * mean_words)))})
        rows.append({"messages": messages})
    return datasets.Dataset.from_list(rows)


def run_isolated(script: str, config: dict, python: str = sys.executable, timeout: int = 1800) -> dict:
    """Run ``script --config JSON`` in a fresh process (so peak RSS is its own); it prints one JSON line."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([python, script, json.dumps(config)], capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{script} {config} failed:\n{proc.stderr[-3000:]}")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"no result line from {script}:\n{proc.stdout[-2000:]}")


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def median_table(results: dict[str, list[dict]], keys: list[str]) -> str:
    lines = ["| setting | " + " | ".join(keys) + " | runs |", "|---" * (len(keys) + 2) + "|"]
    for name, runs in results.items():
        cells = [f"{statistics.median(r[k] for r in runs):.4g}" for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {len(runs)} |")
    return "\n".join(lines)
