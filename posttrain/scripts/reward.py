"""Outcome reward modeling from the command line.

    posttrain reward --model_name_or_path MODEL --dataset_name DATA --output_dir OUT [RewardConfig options]
    posttrain reward --config reward.yaml --learning_rate 1e-4
    python -m posttrain.scripts.reward ...          # the same

MODEL is a hub id or a local folder (a causal-LM checkpoint gets a fresh one-output score head); DATA a hub id,
a local json/jsonl/parquet/csv file or a saved dataset folder with preference pairs (``prompt``/``chosen``/
``rejected`` or ``chosen``/``rejected``, standard or conversational). Add ``--use_peft`` for LoRA (the task type
is SEQ_CLS, so the score head is trained and saved in full).
"""

from __future__ import annotations

from ..models import ModelConfig, peft_config
from ..trainers.reward import RewardConfig, RewardTrainer
from .args import PosttrainParser, ScriptArguments
from .common import load_model_and_tokenizer, load_splits, setup_logging


def make_parser() -> PosttrainParser:
    return PosttrainParser((ScriptArguments, RewardConfig, ModelConfig), prog="posttrain reward")


def run(script_args: ScriptArguments, training_args: RewardConfig, model_args: ModelConfig) -> RewardTrainer:
    from transformers import AutoModelForSequenceClassification

    setup_logging(training_args)
    model, tokenizer = load_model_and_tokenizer(model_args, auto_class=AutoModelForSequenceClassification, num_labels=1)
    train, eval_ds = load_splits(script_args, training_args)
    if model_args.use_peft:
        model_args.lora_task_type = "SEQ_CLS"
    trainer = RewardTrainer(model=model, args=training_args, train_dataset=train, eval_dataset=eval_ds,
                            processing_class=tokenizer, peft_config=peft_config(model_args))
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    if eval_ds is not None:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    return trainer


def main(argv: list[str] | None = None) -> int:
    run(*make_parser().parse_args_and_config(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
