"""One side-by-side run: a posttrain or TRL trainer on a saved model folder and a JSON-lines data file.

    <python> benchmarks/compare_worker.py '{"lib": "trl", "scenario": "dpo", "mode": "check", ...}'

Runs under either library's virtual environment and imports only that library (``lib="trl"`` never imports
posttrain), so the peer runs from its own install. Prints one JSON line: per-step losses and metrics, the tokens
and pairs per second of the timed steps, peak RSS, wall times, the machine load, and a fingerprint of the first
batch (so two runs can be shown to have trained on the same tokens).

``mode``:

* ``check``   -- correctness: fp32, no gradient checkpointing, learning rate 0, sequential data order.
* ``default`` -- what a new user gets: each library's own config defaults; only the shared hyperparameters
  (batch size, max_length, learning rate, steps, seed) are set.
* ``best``    -- each library at its best on this machine: fp32, no gradient checkpointing, plus the scenario's
  ``best`` options (e.g. packing for SFT); see ``BEST`` below.

Token counting is the harness's own and identical for both libraries: the real (non-padding) tokens of the
examples each batch was collated from, summed over the timed steps (steps ``warmup_steps + 1`` .. ``steps``).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import sys
import time

T0 = time.perf_counter()

# Options that make each library fastest on a CPU machine, per scenario (both libraries support all of them).
BEST = {
    "sft": {"packing": True},
    "dpo": {},
    "reward": {},
}
# Per-scenario names of the trainer and config classes (identical in both libraries).
CLASSES = {"sft": ("SFTTrainer", "SFTConfig"), "dpo": ("DPOTrainer", "DPOConfig"), "reward": ("RewardTrainer", "RewardConfig")}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_snapshot() -> tuple[float, float]:
    """(seconds of CPU the whole machine has been busy, seconds of CPU this process has used), from /proc/stat."""
    busy = 0.0
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal ...: busy = all but idle and iowait
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        pass
    t = os.times()
    return busy, t.user + t.system


def other_cpu_cores(start: tuple[float, float], stop: tuple[float, float], seconds: float) -> float:
    """Average number of CPU cores that *other* processes kept busy between two snapshots."""
    return max(0.0, (stop[0] - start[0]) - (stop[1] - start[1])) / max(seconds, 1e-9)


def _read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def example_sequences(ex: dict) -> list[list[int]]:
    """The full token sequences one collated example stands for, from either library's column names.

    SFT: ``input_ids`` (a packed row is one sequence of its concatenated parts). Paired preference rows:
    ``prompt + chosen`` and ``prompt + rejected`` (posttrain: ``*_input_ids``; TRL: ``*_ids``).
    """
    def get(*names):
        for n in names:
            if n in ex and ex[n] is not None:
                return list(ex[n])
        return None

    chosen = get("chosen_input_ids", "chosen_ids")
    if chosen is not None:
        rejected = get("rejected_input_ids", "rejected_ids")
        prompt = get("prompt_input_ids", "prompt_ids") or []
        return [prompt + chosen, prompt + rejected]
    ids = get("input_ids")
    return [ids] if ids is not None else []


def fingerprint(seqs: list[list[int]]) -> str:
    return hashlib.sha1(json.dumps(seqs).encode()).hexdigest()[:12]


class BatchRecorder:
    """Wraps a data collator: records, per batch and in order, the real tokens and the sequences it was built from."""

    def __init__(self, collator):
        self.collator = collator
        self.tokens: list[int] = []
        self.first: list[list[int]] | None = None

    def __call__(self, examples):
        seqs = [s for ex in examples for s in example_sequences(ex)]
        self.tokens.append(sum(len(s) for s in seqs))
        if self.first is None:
            self.first = seqs
        return self.collator(examples)

    def __getattr__(self, name):  # trainers read attributes of their collator (e.g. posttrain's `flatten`)
        return getattr(self.collator, name)


def main(cfg: dict) -> dict:
    import torch

    lib, scenario, mode = cfg["lib"], cfg["scenario"], cfg["mode"]
    torch.set_num_threads(cfg.get("threads", 2))
    load_start = os.getloadavg()
    if lib == "trl":
        import trl as L
    elif lib == "posttrain":
        import posttrain as L
    else:
        raise ValueError(lib)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback

    trainer_cls, config_cls = (getattr(L, n) for n in CLASSES[scenario])
    auto = AutoModelForSequenceClassification if scenario == "reward" else AutoModelForCausalLM
    tokenizer = AutoTokenizer.from_pretrained(cfg["model"])
    dtype = getattr(torch, cfg.get("dtype", "float32"))
    model = auto.from_pretrained(cfg["model"], dtype=dtype)
    data = Dataset.from_list(_read_jsonl(cfg["data"]))

    kwargs = dict(output_dir=cfg.get("output_dir", f"/tmp/posttrain-compare-{lib}-{scenario}-{os.getpid()}"),
                  max_steps=cfg["steps"], per_device_train_batch_size=cfg["batch_size"], logging_steps=1, report_to=[],
                  save_strategy="no", disable_tqdm=True, seed=cfg.get("seed", 0), max_length=cfg["max_length"],
                  learning_rate=cfg.get("learning_rate", 1e-5), dataloader_num_workers=0)
    if lib == "trl" and not torch.cuda.is_available():
        # TRL's bf16 default (on unless fp16) makes TrainingArguments refuse to start on a machine without a GPU unless
        # use_cpu=True is given; posttrain sets it by itself. The least a TRL user must add to run on CPU.
        kwargs["use_cpu"] = True
    if mode in ("check", "best"):
        kwargs.update(bf16=False, gradient_checkpointing=False)
    if mode == "check":
        kwargs.update(learning_rate=0.0)
    if mode == "best":
        kwargs.update(BEST[scenario])
    kwargs.update(cfg.get("overrides", {}))
    args = config_cls(**kwargs)

    extra = {}
    if scenario == "dpo" and cfg.get("ref_model"):
        extra["ref_model"] = AutoModelForCausalLM.from_pretrained(cfg["ref_model"], dtype=dtype)
    init_start = time.perf_counter()
    trainer = trainer_cls(model=model, args=args, train_dataset=data, processing_class=tokenizer, **extra)
    init_s = time.perf_counter() - init_start
    recorder = BatchRecorder(trainer.data_collator)
    trainer.data_collator = recorder
    if mode == "check":  # same order in both libraries, whatever their samplers do
        from torch.utils.data import SequentialSampler

        trainer._get_train_sampler = lambda *a, **k: SequentialSampler(trainer.train_dataset)

    warmup, steps = cfg.get("warmup_steps", 0), cfg["steps"]
    clock: dict[str, float] = {}

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == warmup and "start" not in clock:
                clock["start"] = time.perf_counter()
                clock["cpu_start"] = cpu_snapshot()

        def on_step_end(self, args, state, control, **kw):
            if state.global_step == steps:
                clock["stop"] = time.perf_counter()
                clock["cpu_stop"] = cpu_snapshot()

    trainer.add_callback(Clock())
    train_start = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - train_start
    logs = [h for h in trainer.state.log_history if "loss" in h]
    timed = clock["stop"] - clock["start"]
    timed_tokens = sum(recorder.tokens[warmup:steps])
    pairs = cfg["batch_size"] * (steps - warmup)
    try:
        import importlib.metadata as md

        versions = {p: md.version(p) for p in ("torch", "transformers", "accelerate", "datasets", lib)}
    except Exception:  # noqa: BLE001
        versions = {}
    return {
        "lib": lib, "scenario": scenario, "mode": mode, "versions": versions,
        "losses": [h["loss"] for h in logs],
        "first_log": logs[0],
        "first_batch": fingerprint(recorder.first or []),
        "first_batch_tokens": recorder.tokens[0] if recorder.tokens else 0,
        "dataset_rows": len(trainer.train_dataset),
        "tokens_per_s": timed_tokens / timed,
        "samples_per_s": pairs / timed,
        "timed_tokens": timed_tokens,
        "timed_s": timed,
        "train_s": train_s,
        "init_s": init_s,
        "wall_s": time.perf_counter() - T0,
        "peak_rss_mb": _peak_rss_mb(),
        "bf16": bool(args.bf16),
        "gradient_checkpointing": bool(args.gradient_checkpointing),
        "other_cpu_cores": other_cpu_cores(clock["cpu_start"], clock["cpu_stop"], timed),
        # CPU seconds this process used in the timed steps; tokens per CPU-second is less sensitive to other
        # processes than tokens per wall-second (but counts OpenMP spin-waiting as work)
        "own_cpu_s": clock["cpu_stop"][1] - clock["cpu_start"][1],
        "tokens_per_cpu_s": timed_tokens / max(clock["cpu_stop"][1] - clock["cpu_start"][1], 1e-9),
        "load_start": load_start,
        "load_end": os.getloadavg(),
    }


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
