"""Process reward modeling (PRM) from the command line.

    posttrain prm --model_name_or_path MODEL --dataset_name DATA --output_dir OUT [PRMConfig options]
    posttrain prm --config prm.yaml --train_on_last_step_only
    python -m posttrain.scripts.prm ...          # the same

MODEL is a hub id or a local folder (a causal-LM checkpoint gets a fresh 2-class token-classification head); DATA a
hub id, a local json/jsonl/parquet file or a saved dataset folder with stepwise rows (``prompt``, ``completions``: a
list of steps, ``labels``: one bool per step). Add ``--use_peft`` for LoRA (task type TOKEN_CLS).
"""

from __future__ import annotations

from ..trainers.prm import PRMConfig, PRMTrainer
from .common import parse, train


def main(argv: list[str] | None = None) -> int:
    from transformers import AutoModelForTokenClassification

    script_args, training_args, model_args = parse(PRMConfig, argv, "posttrain prm")
    if model_args.lora_task_type == "CAUSAL_LM":  # the ModelConfig default; a PRM is a token classifier
        model_args.lora_task_type = "TOKEN_CLS"
    train(PRMTrainer, script_args, training_args, model_args, auto_class=AutoModelForTokenClassification,
          model_kwargs={"num_labels": 2})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
