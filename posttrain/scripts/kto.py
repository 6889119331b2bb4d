"""Kahneman-Tversky Optimization from the command line.

    posttrain kto --model_name_or_path MODEL --dataset_name DATA --output_dir OUT [KTOConfig options]
    posttrain kto ... --loss_type apo_zero_unpaired
    python -m posttrain.scripts.kto ...          # the same

DATA holds unpaired rows (``prompt``/``completion``/``label`` with a bool label) or preference pairs, which are
unpaired automatically; a hub id, a local json/jsonl/parquet/csv file or a saved dataset folder.
"""

from __future__ import annotations

from ..trainers.kto import KTOConfig, KTOTrainer
from .common import parse, train


def main(argv: list[str] | None = None) -> int:
    train(KTOTrainer, *parse(KTOConfig, argv, "posttrain kto"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
