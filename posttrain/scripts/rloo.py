"""REINFORCE Leave-One-Out from the command line (the same options as ``posttrain grpo``).

    posttrain rloo --model_name_or_path MODEL --dataset_name PROMPTS --reward_model_name_or_path RM --output_dir OUT
    posttrain rloo ... --reward_funcs accuracy --num_generations 4 --beta 0.05
    python -m posttrain.scripts.rloo ...          # the same

PROMPTS need a ``prompt`` column (text or messages); other columns reach the reward functions. Rewards come
from ``--reward_model_name_or_path`` (or its older name ``--reward_model_path``) and/or ``--reward_funcs``.
"""

from __future__ import annotations

from ..trainers.rloo import RLOOConfig, RLOOTrainer
from .grpo import run


def main(argv: list[str] | None = None) -> int:
    return run(RLOOTrainer, RLOOConfig, argv, "posttrain rloo")


if __name__ == "__main__":
    raise SystemExit(main())
