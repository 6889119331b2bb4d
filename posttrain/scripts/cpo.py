"""Contrastive Preference Optimization (CPO, SimPO, AlphaPO) from the command line.

    posttrain cpo --model_name_or_path MODEL --dataset_name DATA --output_dir OUT [CPOConfig options]
    posttrain cpo ... --loss_type simpo --cpo_alpha 0 --beta 2.0 --simpo_gamma 0.5      # SimPO
    python -m posttrain.scripts.cpo ...          # the same

No reference model. DATA holds preference pairs (``prompt``/``chosen``/``rejected`` or ``chosen``/``rejected``,
standard or conversational): a hub id, a local json/jsonl/parquet/csv file or a saved dataset folder.
"""

from __future__ import annotations

from ..trainers.cpo import CPOConfig, CPOTrainer
from .common import parse, train


def main(argv: list[str] | None = None) -> int:
    train(CPOTrainer, *parse(CPOConfig, argv, "posttrain cpo"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
