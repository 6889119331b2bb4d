"""Outcome reward modeling from the command line.

    posttrain reward --model_name_or_path MODEL --dataset_name DATA --output_dir OUT [RewardConfig options]
    posttrain reward --config reward.yaml --learning_rate 1e-4
    python -m posttrain.scripts.reward ...          # the same

MODEL is a hub id or a local folder (a causal-LM checkpoint gets a fresh one-output score head); DATA a hub id,
a local json/jsonl/parquet/csv file or a saved dataset folder with preference pairs (``prompt``/``chosen``/
``rejected`` or ``chosen``/``rejected``, standard or conversational). Add ``--use_peft`` for LoRA (task type
SEQ_CLS: the score head is trained and saved in full).
"""

from __future__ import annotations

from ..trainers.reward import RewardConfig, RewardTrainer
from .common import parse, train


def main(argv: list[str] | None = None) -> int:
    from transformers import AutoModelForSequenceClassification

    script_args, training_args, model_args = parse(RewardConfig, argv, "posttrain reward")
    if model_args.lora_task_type == "CAUSAL_LM":  # the ModelConfig default; a reward model is a sequence classifier
        model_args.lora_task_type = "SEQ_CLS"
    train(RewardTrainer, script_args, training_args, model_args, auto_class=AutoModelForSequenceClassification,
          model_kwargs={"num_labels": 1})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
