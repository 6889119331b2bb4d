"""Odds Ratio Preference Optimization from the command line.

    posttrain orpo --model_name_or_path MODEL --dataset_name DATA --output_dir OUT [ORPOConfig options]
    python -m posttrain.scripts.orpo ...          # the same

No reference model and no SFT stage. DATA holds preference pairs (``prompt``/``chosen``/``rejected`` or
``chosen``/``rejected``, standard or conversational): a hub id, a local data file or a saved dataset folder.
"""

from __future__ import annotations

from ..trainers.orpo import ORPOConfig, ORPOTrainer
from .common import parse, train


def main(argv: list[str] | None = None) -> int:
    train(ORPOTrainer, *parse(ORPOConfig, argv, "posttrain orpo"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
