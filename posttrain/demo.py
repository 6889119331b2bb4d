"""The quickstart job (`make demo`): post-train a tiny model on a task whose success is measured exactly.

    python -m posttrain.demo --output_dir outputs/demo

Stages (each on the embedded tiny kit, offline, on CPU):

1. build a small Qwen2-style model from a config, with the project's tokenizer;
2. measure held-out exact-match accuracy on reversing 3-5 letters ("Reverse: c a t" -> "t a c");
3. SFT on prompt-completion examples (padding-free batches) whose answers are wrong 40% of the time, as real
   demonstration data is imperfect: the model learns the task (its greedy answers are mostly right) and the
   noise (its samples at temperature 1 are right only about 40% of the time);
4. GRPO with the exact-answer reward on held-apart prompts (the model's own samples, scored and compared
   within each group of ``grpo_num_generations``);
5. measure after each stage: greedy exact match, and the exact match of the model's samples (temperature 1).

It prints a before/after table and writes to the output folder: the models, ``metrics.json``
(accuracies, losses, timings) and ``loss_curve.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass, field


@dataclass
class DemoConfig:
    output_dir: str = "outputs/demo"
    task: str = "reverse"
    min_len: int = 3  # sequence tasks (reverse, copy, sort): number of symbols
    max_len: int = 5
    digits: int = 2  # addition: digits per operand
    model_size: str = "small"
    train_examples: int = 4000
    eval_examples: int = 200
    sft_steps: int = 300
    sft_batch_size: int = 32
    sft_learning_rate: float = 2e-3
    sft_label_noise: float = 0.4  # fraction of SFT answers replaced by a wrong answer
    conversational: bool = False  # chat-formatted prompts (learn more slowly on this model size)
    grpo_steps: int = 100
    grpo_prompts: int = 1024
    grpo_batch_size: int = 64  # completions per step
    grpo_num_generations: int = 8
    grpo_learning_rate: float = 3e-4
    seed: int = 0
    threads: int = 1  # CPU threads: tiny models train fastest on one, and one never thrashes a busy machine
    # fp32 unless asked (the README's numbers are fp32 runs): in one bf16 run (posttrain's default on a CPU with
    # native bf16) this 1.1M-parameter model reached greedy 80% after SFT instead of ~94%, sampled 22% -> 43.5% by GRPO
    bf16: bool = False
    stages: list[str] = field(default_factory=lambda: ["sft", "grpo"])


def _accuracy(model, tokenizer, test) -> tuple[float, float]:
    """(greedy exact match, exact match of 4 samples per prompt at temperature 1)."""
    from .evaluation import exact_match_accuracy

    greedy = exact_match_accuracy(model, tokenizer, test["prompt"], test["answer"], max_new_tokens=16)[0]
    sampled = exact_match_accuracy(model, tokenizer, test["prompt"], test["answer"], max_new_tokens=16,
                                   temperature=1.0, num_samples=4)[0]
    return greedy, sampled


def _with_wrong_answers(dataset, task_name: str, task_kwargs: dict, fraction: float, seed: int):
    """The prompt-completion ``dataset`` with ``fraction`` of its completions replaced by wrong answers."""
    import random

    from datasets import Dataset

    from .kit import get_task

    if fraction <= 0:
        return dataset
    task, rng = get_task(task_name, **task_kwargs), random.Random(seed)
    rows = []
    for row in dataset:
        if rng.random() < fraction:
            wrong = task.wrong_answer(rng, row["prompt"])
            row = {**row, "completion": [{"role": "assistant", "content": wrong}]
                   if isinstance(row["completion"], list) else wrong}
        rows.append(row)
    return Dataset.from_list(rows)


def _plot(curves: dict[str, list[tuple[int, float]]], path: str) -> bool:
    """One panel per curve ("SFT loss", "GRPO reward", ...) side by side."""
    curves = {name: points for name, points in curves.items() if points}
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, max(len(curves), 1), figsize=(5 * max(len(curves), 1), 3.5), squeeze=False)
    for ax, (name, points) in zip(axes[0], curves.items()):
        ax.plot([p[0] for p in points], [p[1] for p in points])
        ax.set_xlabel("step")
        ax.set_title(f"posttrain demo: {name}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def run(cfg: DemoConfig) -> dict:
    import torch

    from .kit import build_tiny_model, load_tokenizer, make_dataset
    from .trainers.sft import SFTConfig, SFTTrainer

    t0 = time.time()
    os.makedirs(cfg.output_dir, exist_ok=True)
    torch.manual_seed(cfg.seed)
    if not torch.cuda.is_available():
        torch.set_num_threads(cfg.threads)
    tokenizer = load_tokenizer()
    task_kwargs = {"digits": cfg.digits} if cfg.task == "addition" else {"min_len": cfg.min_len, "max_len": cfg.max_len}
    train = make_dataset(cfg.task, "prompt_completion", n=cfg.train_examples, seed=cfg.seed,
                         conversational=cfg.conversational, **task_kwargs)
    sft_data = _with_wrong_answers(train, cfg.task, task_kwargs, cfg.sft_label_noise, cfg.seed)
    test = make_dataset(cfg.task, "prompt_only", n=cfg.eval_examples, seed=cfg.seed + 1, conversational=cfg.conversational,
                        exclude=train, **task_kwargs)
    model = build_tiny_model("qwen2", size=cfg.model_size, seed=cfg.seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[demo] task: {cfg.task} {task_kwargs}, {len(train)} training / {len(test)} held-out prompts; "
          f"model: Qwen2-style, {n_params / 1e6:.2f}M parameters")
    rows = [("base model", _accuracy(model, tokenizer, test))]
    print(f"[demo] held-out exact match before training: greedy {rows[0][1][0]:.1%}, sampled {rows[0][1][1]:.1%}")
    curves: dict[str, list[tuple[int, float]]] = {}
    timings: dict[str, float] = {}

    if "sft" in cfg.stages:
        t = time.time()
        args = SFTConfig(
            output_dir=os.path.join(cfg.output_dir, "sft"), max_steps=cfg.sft_steps,
            per_device_train_batch_size=cfg.sft_batch_size, learning_rate=cfg.sft_learning_rate,
            lr_scheduler_type="cosine", warmup_steps=20, logging_steps=10, padding_free=True,
            save_strategy="no", report_to=[], seed=cfg.seed, bf16=cfg.bf16,
        )
        trainer = SFTTrainer(model=model, args=args, train_dataset=sft_data, processing_class=tokenizer)
        trainer.train()
        trainer.save_model(os.path.join(cfg.output_dir, "sft_model"))
        curves["SFT loss"] = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]
        timings["sft_seconds"] = round(time.time() - t, 1)
        rows.append(("after SFT", _accuracy(model, tokenizer, test)))
        print(f"[demo] after SFT: greedy {rows[-1][1][0]:.1%}, sampled {rows[-1][1][1]:.1%}")

    if "grpo" in cfg.stages:
        from .rollout.rewards import accuracy_reward
        from .trainers.grpo import GRPOConfig, GRPOTrainer

        t = time.time()
        prompts = make_dataset(cfg.task, "prompt_only", n=cfg.grpo_prompts, seed=cfg.seed + 2,
                               conversational=cfg.conversational,
                               exclude=[train, test], **task_kwargs)
        args = GRPOConfig(
            output_dir=os.path.join(cfg.output_dir, "grpo"), max_steps=cfg.grpo_steps,
            per_device_train_batch_size=cfg.grpo_batch_size, num_generations=cfg.grpo_num_generations,
            max_completion_length=16, temperature=1.0, learning_rate=cfg.grpo_learning_rate,
            lr_scheduler_type="constant_with_warmup", warmup_steps=15, logging_steps=10,
            save_strategy="no", report_to=[], seed=cfg.seed, bf16=cfg.bf16,
        )
        trainer = GRPOTrainer(model, accuracy_reward, args=args, train_dataset=prompts, processing_class=tokenizer)
        trainer.train()
        trainer.save_model(os.path.join(cfg.output_dir, "grpo_model"))
        curves["GRPO reward"] = [(h["step"], h["reward"]) for h in trainer.state.log_history if "reward" in h]
        timings["grpo_seconds"] = round(time.time() - t, 1)
        rows.append(("after GRPO", _accuracy(model, tokenizer, test)))

    width = max(len(r[0]) for r in rows)
    print("\n" + "stage".ljust(width) + "  held-out exact match: greedy | sampled (temperature 1)")
    for name, (greedy, sampled) in rows:
        print(f"{name.ljust(width)}  {greedy:7.1%} | {sampled:7.1%}")
    metrics = {
        "config": asdict(cfg),
        "held_out_exact_match": {name: greedy for name, (greedy, _) in rows},
        "held_out_sampled_exact_match": {name: sampled for name, (_, sampled) in rows},
        "loss_curves": curves,
        "timings": {**timings, "total_seconds": round(time.time() - t0, 1)},
        "num_parameters": n_params,
    }
    with open(os.path.join(cfg.output_dir, "metrics.json"), "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=2)
    plotted = _plot(curves, os.path.join(cfg.output_dir, "loss_curve.png"))
    print(f"\n[demo] wrote {cfg.output_dir}/metrics.json" + (f", {cfg.output_dir}/loss_curve.png" if plotted else "")
          + f" and the trained model(s) in {cfg.output_dir}/ ({metrics['timings']['total_seconds']:.0f} s)")
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m posttrain.demo", description=__doc__.split("\n\n")[0])
    defaults = DemoConfig()
    for name, value in asdict(defaults).items():
        if isinstance(value, list):
            parser.add_argument(f"--{name}", nargs="+", default=value)
        elif isinstance(value, bool):
            parser.add_argument(f"--{name}", type=lambda v: v.lower() in ("1", "true", "yes"), default=value)
        else:
            parser.add_argument(f"--{name}", type=type(value), default=value)
    run(DemoConfig(**vars(parser.parse_args(argv))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
