"""Check a model without writing code: sample its completions (``posttrain generate``) or score them
(``posttrain eval``).

    posttrain generate --model_name_or_path OUT --prompt "Sort: 3 1 2" "Sort: 9 7 8"
    posttrain generate --model_name_or_path OUT --dataset_name prompts.jsonl --limit 20 --output samples.jsonl
    posttrain eval --model_name_or_path OUT --dataset_name test.jsonl --reward_funcs accuracy
    posttrain eval --model_name_or_path OUT --dataset_name test.jsonl --reward_model_name_or_path RM --temperature 1

MODEL is a hub id or a local folder (a trained output folder). Prompts come from ``--prompt`` (one or more) or from a
dataset's ``prompt`` column (text, or messages rendered with the chat template); generation is greedy unless
``--temperature`` is set. ``eval`` scores every completion with reward functions (built-in names such as
``accuracy``, which compares with the dataset's ``answer``/``solution`` column, or ``file.py:function``) and/or a
reward model, exactly as the GRPO trainer would, and prints each one's mean; ``--output`` keeps every sample and its
scores as JSON lines.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .grpo import RewardOptions, reward_functions


@dataclass
class GenerateArguments:
    """What to generate from, and how."""

    model_name_or_path: str | None = field(default=None, metadata={"help": "The model: a hub id or a local folder."})
    prompt: list[str] | None = field(default=None, metadata={"help": "One or more prompts: --prompt TEXT [TEXT ...]."})
    dataset_name: str | None = field(default=None, metadata={
        "help": "Prompts from a dataset (hub id, json/jsonl/parquet/csv file, saved folder) with a 'prompt' column."})
    dataset_config: str | None = field(default=None, metadata={"help": "The dataset's configuration name."})
    dataset_split: str = field(default="test", metadata={"help": "The split to read (the only one when there is one)."})
    limit: int | None = field(default=None, metadata={"help": "Use only the first N prompts."})
    max_new_tokens: int = field(default=64, metadata={"help": "Tokens to generate at most, per completion."})
    temperature: float = field(default=0.0, metadata={"help": "Sampling temperature; 0 is greedy decoding."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling (with a temperature)."})
    num_samples: int = field(default=1, metadata={"help": "Completions per prompt (with a temperature)."})
    batch_size: int = field(default=16, metadata={"help": "Prompts generated together."})
    seed: int = field(default=0, metadata={"help": "Seed of the sampling."})
    output: str | None = field(default=None, metadata={"help": "Write every sample (and its scores) to this .jsonl."})


def _rows(args: GenerateArguments) -> list[dict]:
    from ..data import load_any

    if args.prompt and args.dataset_name:
        raise SystemExit("error: give --prompt or --dataset_name, not both.")
    if args.prompt:
        rows = [{"prompt": p} for p in args.prompt]
    elif args.dataset_name:
        data = load_any(args.dataset_name, args.dataset_config, split=None)
        if hasattr(data, "keys"):
            if args.dataset_split not in data and len(data) > 1:
                raise SystemExit(f"error: the dataset has no split '{args.dataset_split}' (splits: {list(data)}).")
            data = data[args.dataset_split] if args.dataset_split in data else next(iter(data.values()))
        if "prompt" not in data.column_names:
            raise SystemExit(f"error: the dataset has no 'prompt' column (columns: {data.column_names}).")
        rows = data.select(range(min(args.limit or len(data), len(data)))).to_list()
    else:
        raise SystemExit("error: give --prompt TEXT [TEXT ...] or --dataset_name DATA.")
    return rows[: args.limit] if args.limit else rows


def sample(args: GenerateArguments):
    """(rows, completions): each row repeated ``num_samples`` times beside its completion, in order."""
    import torch

    from ..models import load_pretrained, load_processing_class
    from ..rollout import generate

    if not args.model_name_or_path:
        raise SystemExit("error: --model_name_or_path is required (a hub id or a local model folder).")
    if args.num_samples > 1 and args.temperature == 0:
        raise SystemExit("error: --num_samples > 1 needs --temperature > 0 (greedy decoding gives one completion).")
    rows = _rows(args)
    model = load_pretrained(args.model_name_or_path)  # a causal LM (or a vision-language model)
    if torch.cuda.is_available():
        model = model.to("cuda")
    model.eval()
    tokenizer = load_processing_class(args.model_name_or_path)
    sampling = args.temperature > 0
    gens = generate(model, tokenizer, [row["prompt"] for row in rows], max_new_tokens=args.max_new_tokens,
                    do_sample=sampling, temperature=args.temperature if sampling else 1.0, top_p=args.top_p,
                    num_return_sequences=args.num_samples if sampling else 1, batch_size=args.batch_size,
                    seed=args.seed if sampling else None)
    k = args.num_samples if sampling else 1
    return [rows[i // k] for i in range(len(gens.texts))], list(gens.texts)


def _show(prompt) -> str:
    if isinstance(prompt, list):  # messages: the last one's text
        prompt = prompt[-1].get("content", "") if prompt else ""
    return " ".join(str(prompt).split())


def _write(path: str, rows: list[dict], completions: list[str], scores: dict[str, list[float]] | None = None):
    with open(path, "w", encoding="utf-8") as f:
        for i, (row, completion) in enumerate(zip(rows, completions)):
            out = {**row, "completion": completion}
            if scores:
                out["scores"] = {name: values[i] for name, values in scores.items()}
            f.write(json.dumps(out, default=str) + "\n")


def main_generate(argv: list[str] | None = None) -> int:
    from .common import parse_classes

    (args,) = parse_classes((GenerateArguments,), argv, "posttrain generate")
    rows, completions = sample(args)
    for row, completion in zip(rows, completions):
        print(f"> {_show(row['prompt'])}\n{completion}\n")
    if args.output:
        _write(args.output, rows, completions)
        print(f"{len(completions)} samples written to {args.output}")
    return 0


@dataclass
class EvalArguments(GenerateArguments, RewardOptions):
    """Generation options, and the reward functions/models that score the completions."""


def main_eval(argv: list[str] | None = None) -> int:
    from ..rollout.scoring import RewardScorer
    from .common import parse_classes

    (args,) = parse_classes((EvalArguments,), argv, "posttrain eval")
    funcs = reward_functions(args, args.max_new_tokens, required=False)
    if not funcs:
        raise SystemExit("error: give --reward_funcs (e.g. accuracy) and/or --reward_model_name_or_path to score "
                         "the completions (posttrain generate only samples them).")
    rows, completions = sample(args)
    scorer = RewardScorer(funcs)
    extra = {k: [row.get(k) for row in rows] for k in rows[0] if k != "prompt"}
    result = scorer([row["prompt"] for row in rows], completions, **extra)
    per_func = result.as_dict()
    print(f"{len(completions)} completions of {len(completions) // max(args.num_samples if args.temperature else 1, 1)} prompts "
          f"({'greedy' if args.temperature == 0 else f'temperature {args.temperature}'}):")
    for name, values in per_func.items():
        finite = [v for v in values if v == v]  # a function may return None (NaN) for rows it does not score
        mean = sum(finite) / len(finite) if finite else float("nan")
        print(f"  {name}: mean {mean:.4f} over {len(finite)}")
    if len(per_func) > 1:
        total = [v for v in result.rewards.tolist() if v == v]
        print(f"  weighted total: mean {sum(total) / len(total):.4f}")
    if args.output:
        _write(args.output, rows, completions, per_func)
        print(f"{len(completions)} samples and scores written to {args.output}")
    return 0


__all__ = ["GenerateArguments", "EvalArguments", "sample", "main_generate", "main_eval"]
