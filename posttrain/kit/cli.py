"""Command line of the offline kit (``posttrain kit ...``).

Examples::

    posttrain kit build-model --arch qwen2 --head causal-lm --size tiny --seed 0 --output_dir runs/tiny-qwen2
    posttrain kit build-model --arch llava --output_dir runs/tiny-llava      # vision-language model + processor
    posttrain kit build-model --arch gemma3-vlm --output_dir runs/tiny-gemma3-vlm   # Gemma 3 VLM + Gemma3Processor
    posttrain kit build-model --arch smolvlm --output_dir runs/tiny-smolvlm  # SmolVLM (Idefics3) + Idefics3Processor
    posttrain kit make-data --task colors --format prompt_completion --conversational --n 300 --output colors.parquet
    posttrain kit make-data --task motion --format prompt_completion --conversational --n 400 --output motion.parquet
    posttrain kit make-data --task colors --format preference --conversational --n 300 --output pairs.parquet  # DPO
    posttrain kit make-data --task addition --format prompt_completion --n 1000 --seed 0 --output data/train.jsonl
    posttrain kit make-data --task addition --format prompt_only --n 100 --seed 1 \
        --exclude data/train.jsonl --output data/test.jsonl
    posttrain kit make-agent-data --kind tool_sft --n 3000 --output tools_sft.jsonl     # docs/agents.md
    posttrain kit make-agent-data --kind tool_prompts --n 512 --seed 5 --output tool_prompts.jsonl
    posttrain kit make-agent-data --kind guess_prompts --n 512 --output guess_prompts.jsonl
    posttrain kit tokenizer-path
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from posttrain.kit.images import VISION_TASKS
from posttrain.kit.tasks import TASKS

__all__ = ["build_parser", "main"]

# Kept in sync with posttrain.kit.models / posttrain.kit.datasets (not imported here to keep --help fast).
_ARCHS = ("qwen2", "llama", "gpt2", "gemma3")
_VLM_ARCHS = ("llava", "gemma3-vlm", "smolvlm")
_HEADS = ("causal-lm", "seq-cls", "token-cls")
_SIZES = ("tiny", "small", "bench", "real", "real-262k")
_AGENT_KINDS = ("tool_sft", "tool_prompts", "guess_prompts", "guess_sft")
_FORMATS = (
    "language_modeling",
    "prompt_only",
    "prompt_completion",
    "preference",
    "preference_implicit",
    "unpaired_preference",
    "stepwise",
)


def _key_value(text: str) -> tuple[str, Any]:
    """Parse ``key=value``; the value is read as JSON if possible (``3``, ``true``), else kept as text."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.replace("-", "_"), value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``posttrain kit``."""
    parser = argparse.ArgumentParser(
        prog="posttrain kit", description="Offline tiny models, tokenizer and synthetic data."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    model = sub.add_parser("build-model", help="build a randomly initialised tiny model and save it with the tokenizer "
                           "(llava, gemma3-vlm, smolvlm: a vision-language model, saved with its processor)")
    model.add_argument("--arch", choices=_ARCHS + _VLM_ARCHS, default="qwen2")
    model.add_argument("--head", choices=_HEADS, default="causal-lm", help="text models only (vision-language models: causal-lm)")
    model.add_argument("--size", choices=_SIZES, default="tiny")
    model.add_argument("--seed", type=int, default=0)
    model.add_argument("--output_dir", "--output-dir", dest="output_dir", required=True)
    model.add_argument(
        "--set", dest="overrides", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
        help="override a config field, e.g. --set num_hidden_layers=1 (repeatable)",
    )  # fmt: skip

    data = sub.add_parser("make-data", help="write a synthetic task dataset in one of TRL's formats")
    data.add_argument("--task", choices=sorted(TASKS) + list(VISION_TASKS), default="addition",
                      help="colors: images; motion: videos (write .parquet or a folder)")
    data.add_argument("--format", choices=_FORMATS, default="prompt_completion")
    data.add_argument("--conversational", action="store_true", help="use lists of chat messages")
    data.add_argument("--n", type=int, default=1000, help="number of rows")
    data.add_argument("--seed", type=int, default=0)
    data.add_argument(
        "--output", required=True,
        help="a .jsonl, .json, .parquet or .csv file, or a folder (save_to_disk)",
    )  # fmt: skip
    data.add_argument(
        "--task-arg", "--task_arg", dest="task_args", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
        help="task option, e.g. --task-arg digits=3 (repeatable)",
    )  # fmt: skip
    data.add_argument(
        "--exclude", action="append", default=[], metavar="PATH",
        help="a dataset file or folder whose questions must not appear (repeatable)",
    )  # fmt: skip
    data.add_argument("--system-prompt", "--system_prompt", dest="system_prompt", default=None)
    data.add_argument("--allow-duplicates", action="store_true", help="allow a question to appear more than once")
    data.add_argument(
        "--step-errors", "--step_errors", dest="step_errors", choices=["first", "independent"], default="first",
        help="stepwise only: 'first' (labels False from the first wrong step on) or 'independent' (each step wrong "
        "with probability 1/2, labelled on its own)",
    )  # fmt: skip

    agent = sub.add_parser("make-agent-data", help="write a kit dataset for tool calling or a multi-turn "
                           "environment (docs/agents.md)")
    agent.add_argument("--kind", required=True, choices=_AGENT_KINDS,
                       help="tool_sft: multiply-tool demonstrations (messages + tools); tool_prompts: questions with "
                       "their answer; guess_prompts: guessing-game prompts with their secret; guess_sft: games played")
    agent.add_argument("--n", type=int, required=True, help="number of rows")
    agent.add_argument("--seed", type=int, default=0)
    agent.add_argument("--wrong_fraction", type=float, default=0.0, help="tool_sft: share of calls with wrong arguments")
    agent.add_argument("--high", type=int, default=8, help="guess_*: numbers from 1 to HIGH")
    agent.add_argument("--output", required=True, help="output file (.jsonl, .json, .parquet, .csv) or folder")

    sub.add_parser("tokenizer-path", help="print the folder of the shipped tokenizer")
    return parser


def _build_model(args: argparse.Namespace) -> int:
    from posttrain.kit.models import build_tiny_model, build_tiny_vlm

    if args.arch in _VLM_ARCHS:
        if args.head != "causal-lm":
            raise ValueError(f"--arch {args.arch} builds a vision-language model; --head {args.head} does not apply")
        path = build_tiny_vlm(args.size, seed=args.seed, output_dir=args.output_dir, arch=args.arch,
                              **dict(args.overrides))
        print(f"saved {args.arch} ({args.size}) and its processor to {path}")
        return 0
    path = build_tiny_model(
        args.arch, args.head, args.size, seed=args.seed, output_dir=args.output_dir, **dict(args.overrides)
    )
    print(f"saved {args.arch} {args.head} ({args.size}) to {path}")
    return 0


def _make_data(args: argparse.Namespace) -> int:
    from posttrain.kit.datasets import make_dataset, question_keys, read_dataset, write_dataset

    exclude: set[str] = set()
    for path in args.exclude:
        exclude |= question_keys(read_dataset(path))
    dataset = make_dataset(
        args.task,
        args.format,
        n=args.n,
        seed=args.seed,
        conversational=args.conversational,
        exclude=exclude,
        unique=not args.allow_duplicates,
        system_prompt=args.system_prompt,
        step_errors=args.step_errors,
        **dict(args.task_args),
    )
    path = write_dataset(dataset, args.output)
    print(f"wrote {len(dataset)} {args.task} rows ({args.format}) to {path}")
    return 0


def _make_agent_data(args: argparse.Namespace) -> int:
    from datasets import Dataset

    from posttrain.kit import agents
    from posttrain.kit.datasets import write_dataset

    rows = {"tool_sft": lambda: agents.tool_use_rows(args.n, args.seed, args.wrong_fraction),
            "tool_prompts": lambda: agents.tool_prompt_rows(args.n, args.seed),
            "guess_prompts": lambda: agents.guess_prompt_rows(args.n, args.high, args.seed),
            "guess_sft": lambda: agents.guess_demo_rows(args.n, args.high, args.seed)}[args.kind]()
    path = write_dataset(Dataset.from_list(rows), args.output)
    print(f"wrote {len(rows)} {args.kind} rows to {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run ``posttrain kit`` with ``argv`` (``sys.argv[1:]`` if None); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "build-model":
            return _build_model(args)
        if args.command == "make-data":
            return _make_data(args)
        if args.command == "make-agent-data":
            return _make_agent_data(args)
        from posttrain.kit import tokenizer_path

        print(tokenizer_path())
        return 0
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"{parser.prog} {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
