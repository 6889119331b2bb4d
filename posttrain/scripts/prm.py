"""Process reward modeling (PRM) from the command line.

    posttrain prm --model_name_or_path MODEL --dataset_name DATA --output_dir OUT [PRMConfig options]
    posttrain prm --config prm.yaml --step_separator "\\n\\n"
    python -m posttrain.scripts.prm ...          # the same

MODEL is a hub id or a local folder (a causal-LM checkpoint gets a fresh 2-class token-classification head); DATA a
hub id, a local json/jsonl/parquet file or a saved dataset folder with stepwise rows (``prompt``, ``completions``: a
list of steps, ``labels``: one bool per step). Add ``--use_peft`` for LoRA (task type TOKEN_CLS).
"""

from __future__ import annotations

from ..models import ModelConfig, peft_config
from ..trainers.prm import PRMConfig, PRMTrainer
from .args import PosttrainParser, ScriptArguments
from .common import load_model_and_tokenizer, load_splits, setup_logging


def make_parser() -> PosttrainParser:
    return PosttrainParser((ScriptArguments, PRMConfig, ModelConfig), prog="posttrain prm")


def run(script_args: ScriptArguments, training_args: PRMConfig, model_args: ModelConfig) -> PRMTrainer:
    from transformers import AutoModelForTokenClassification

    setup_logging(training_args)
    model, tokenizer = load_model_and_tokenizer(model_args, auto_class=AutoModelForTokenClassification, num_labels=2)
    train, eval_ds = load_splits(script_args, training_args)
    if model_args.use_peft:
        model_args.lora_task_type = "TOKEN_CLS"
    trainer = PRMTrainer(model=model, args=training_args, train_dataset=train, eval_dataset=eval_ds,
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
