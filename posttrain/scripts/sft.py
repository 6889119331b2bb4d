"""Supervised fine-tuning from the command line.

    posttrain sft --model_name_or_path MODEL --dataset_name DATA --output_dir OUT [SFTConfig options]
    posttrain sft --config sft.yaml --learning_rate 1e-4
    python -m posttrain.scripts.sft ...          # the same

MODEL is a hub id or a local folder; DATA a hub id, a local json/jsonl/parquet/csv file or a saved
dataset folder. Add ``--use_peft`` for LoRA and ``--load_in_4bit`` for QLoRA.
"""

from __future__ import annotations

from ..trainers.sft import SFTConfig, SFTTrainer
from .common import parse, train


def main(argv: list[str] | None = None) -> int:
    train(SFTTrainer, *parse(SFTConfig, argv, "posttrain sft"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
