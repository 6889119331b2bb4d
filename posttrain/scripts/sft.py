"""Supervised fine-tuning from the command line.

    posttrain sft --model_name_or_path MODEL --dataset_name DATA --output_dir OUT [SFTConfig options]
    posttrain sft --config sft.yaml --learning_rate 1e-4
    python -m posttrain.scripts.sft ...          # the same

MODEL is a hub id or a local folder; DATA a hub id, a local json/jsonl/parquet/csv file or a saved
dataset folder. Add ``--use_peft`` for LoRA and ``--load_in_4bit`` for QLoRA.
"""

from __future__ import annotations

from ..models import ModelConfig, peft_config
from ..trainers.sft import SFTConfig, SFTTrainer
from .args import PosttrainParser, ScriptArguments
from .common import load_model_and_tokenizer, load_splits, save_run, setup_logging


def make_parser() -> PosttrainParser:
    return PosttrainParser((ScriptArguments, SFTConfig, ModelConfig), prog="posttrain sft")


def run(script_args: ScriptArguments, training_args: SFTConfig, model_args: ModelConfig) -> SFTTrainer:
    setup_logging(training_args)
    model, tokenizer = load_model_and_tokenizer(model_args)
    train, eval_ds = load_splits(script_args, training_args)
    trainer = SFTTrainer(model=model, args=training_args, train_dataset=train, eval_dataset=eval_ds,
                         processing_class=tokenizer, peft_config=peft_config(model_args))
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    save_run(trainer, training_args.output_dir)
    return trainer


def main(argv: list[str] | None = None) -> int:
    run(*make_parser().parse_args_and_config(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
