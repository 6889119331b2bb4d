"""Direct Preference Optimization from the command line.

    posttrain dpo --model_name_or_path MODEL --dataset_name DATA --output_dir OUT [DPOConfig options]
    posttrain dpo --config dpo.yaml --beta 0.05
    posttrain dpo ... --loss_type sigmoid bco_pair sft --loss_weights 0.8 0.2 1.0     # MPO
    python -m posttrain.scripts.dpo ...          # the same

MODEL is a hub id or a local folder; the reference policy is a frozen copy of it (or, with ``--use_peft``,
the model with its adapter disabled; ``--precompute_ref_log_probs`` computes the reference log-probs once).
DATA is a hub id, a local json/jsonl/parquet/csv file or a saved dataset folder with preference pairs
(``prompt``/``chosen``/``rejected`` or ``chosen``/``rejected``, standard or conversational); with an ``images``
column and a vision-language MODEL, its processor handles the images (docs/dpo.md, "Vision-language models").
"""

from __future__ import annotations

from ..trainers.dpo import DPOConfig, DPOTrainer
from .common import parse, train


def main(argv: list[str] | None = None) -> int:
    train(DPOTrainer, *parse(DPOConfig, argv, "posttrain dpo"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
