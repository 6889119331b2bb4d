"""posttrain SFT on CPU: fp32 (posttrain's CPU default) vs bf16 autocast (``bf16=True``), speed, memory and loss.

    .venv/bin/python benchmarks/bf16_cpu.py speed [--size bench] [--repeats 3] [--steps 5] [--warmup_steps 1]
    .venv/bin/python benchmarks/bf16_cpu.py loss  [--size small] [--steps 40] [--learning_rate 1e-3]

``speed`` alternates fp32 and bf16 runs (A B, B A, ...), one fresh process each (``compare_worker.py``, posttrain only,
default settings plus ``bf16=True`` for the bf16 runs), and reports medians. ``loss`` trains the same model on the
same data order twice (fp32, bf16) with a learning rate high enough for the loss to fall, and prints both curves.
Evidence for whether ``PosttrainConfig``'s automatic ``bf16`` should also turn on for CPUs with native bf16.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.compare import base_config, run_worker  # noqa: E402
from benchmarks.compare_data import OUT, prepare  # noqa: E402


def cpu_info() -> dict:
    import torch

    flags = set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {"capability": torch.backends.cpu.get_cpu_capability(), "avx512_bf16": "avx512_bf16" in flags,
            "amx_bf16": "amx_bf16" in flags}


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["speed", "loss"])
    p.add_argument("--size", default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--warmup_steps", type=int, default=1)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--learning_rate", type=float, default=1e-3)
    a = p.parse_args(argv)
    size = a.size or ("bench" if a.what == "speed" else "small")
    a.steps = a.steps or (5 if a.what == "speed" else 40)
    if a.what == "loss":
        a.warmup_steps = 0
    paths = prepare(size, 400, 400)
    cfg = dict(base_config("sft", size, paths, a), mode="default", lib="posttrain")
    if a.what == "loss":
        cfg.update(learning_rate=a.learning_rate, overrides={"lr_scheduler_type": "constant"})
    runs: dict[str, list[dict]] = {"fp32": [], "bf16": []}
    order = ["fp32", "bf16"]
    for i in range(a.repeats if a.what == "speed" else 1):
        for name in (order if i % 2 == 0 else order[::-1]):
            c = json.loads(json.dumps(cfg))
            if name == "bf16":
                c["overrides"]["bf16"] = True
            r = run_worker(c)
            runs[name].append(r)
            print(f"{name}: {r['tokens_per_s']:.0f} tok/s, {r['peak_rss_mb']:.0f} MB, other procs {r['other_cpu_cores']:.2f}"
                  f" cores, load {r['load_start'][0]:.2f}, bf16={r['bf16']}, losses {[round(x, 4) for x in r['losses']]}", flush=True)
    info = cpu_info()
    lines = [f"CPU: {info}; model kit qwen2 '{size}', SFT batch {a.batch_size}, max_length 512, {a.steps} steps"]
    for name, rs in runs.items():
        med = lambda k: statistics.median(r[k] for r in rs)  # noqa: E731
        lines.append(f"{name}: tokens/s {med('tokens_per_s'):.0f} (runs {[round(r['tokens_per_s']) for r in rs]}), "
                     f"peak RSS {med('peak_rss_mb'):.0f} MB, other-process CPU {med('other_cpu_cores'):.2f} cores, "
                     f"load {statistics.median(r['load_start'][0] for r in rs):.2f}, first/last loss "
                     f"{rs[0]['losses'][0]:.4f}/{rs[0]['losses'][-1]:.4f}")
    if a.what == "speed":
        f, b = (statistics.median(r["tokens_per_s"] for r in runs[k]) for k in ("fp32", "bf16"))
        lines.append(f"bf16/fp32 speed ratio {b / f:.2f}")
    else:
        lf, lb = runs["fp32"][0]["losses"], runs["bf16"][0]["losses"]
        lines.append("step: fp32 / bf16 loss\n" + "\n".join(f"{i + 1}: {x:.4f} / {y:.4f}" for i, (x, y) in enumerate(zip(lf, lb))))
    text = "\n".join(lines)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"bf16-{a.what}-{size}-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(runs, indent=1))
    (OUT / f"bf16-{a.what}-{size}-latest.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
