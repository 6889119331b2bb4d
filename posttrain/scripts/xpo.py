"""Exploratory Preference Optimization from the command line: the options of ``posttrain online-dpo`` plus
``--alpha`` (one value per epoch allowed).

    posttrain xpo --model_name_or_path MODEL --dataset_name PROMPTS --reward_funcs accuracy --output_dir OUT
    posttrain xpo ... --reward_model_path RM --alpha 1e-5
    python -m posttrain.scripts.xpo ...          # the same
"""

from __future__ import annotations

from ..trainers.xpo import XPOConfig, XPOTrainer
from .online_dpo import run


def main(argv: list[str] | None = None) -> int:
    return run(XPOConfig, XPOTrainer, argv, "posttrain xpo")


if __name__ == "__main__":
    raise SystemExit(main())
