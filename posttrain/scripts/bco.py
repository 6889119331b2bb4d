"""Binary Classifier Optimization from the command line.

    posttrain bco --model_name_or_path MODEL --dataset_name DATA --output_dir OUT [BCOConfig options]
    python -m posttrain.scripts.bco ...          # the same

DATA holds unpaired rows (``prompt``/``completion``/``label``) or preference pairs, unpaired automatically.
The command line trains without UDM density-ratio weights; for UDM, call ``BCOTrainer`` from Python with an
``embedding_func`` (see ``posttrain.trainers.bco.model_embedding_func``).
"""

from __future__ import annotations

from ..trainers.bco import BCOConfig, BCOTrainer
from .common import parse, train


def main(argv: list[str] | None = None) -> int:
    train(BCOTrainer, *parse(BCOConfig, argv, "posttrain bco"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
