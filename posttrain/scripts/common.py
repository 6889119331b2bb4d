"""Pieces every training script shares: loading the model and the dataset splits from script arguments."""

from __future__ import annotations

import logging
import os
import time

from ..data import load_any
from ..models import ModelConfig, load_pretrained, load_processing_class, model_init_kwargs

logger = logging.getLogger("posttrain")


def setup_logging(training_args) -> None:
    import transformers

    level = training_args.get_process_log_level()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=level)
    transformers.utils.logging.set_verbosity(level)


def load_model_and_tokenizer(model_args: ModelConfig, auto_class=None, **extra):
    if not model_args.model_name_or_path:
        raise SystemExit("error: --model_name_or_path is required (a hub id or a local model folder).")
    kwargs = model_init_kwargs(model_args)
    kwargs.update(extra)
    model = load_pretrained(model_args.model_name_or_path, auto_class, **kwargs)
    tokenizer_path = model_args.tokenizer_name_or_path or model_args.model_name_or_path
    tokenizer = load_processing_class(tokenizer_path, revision=model_args.model_revision,
                                      trust_remote_code=model_args.trust_remote_code)  # a processor for a VLM
    return model, tokenizer


def load_splits(script_args, training_args):
    """(train, eval or None) from ``--dataset_name``; eval only when an eval strategy is set."""
    if not script_args.dataset_name:
        raise SystemExit("error: --dataset_name is required (a hub id, a local data file, or a saved dataset folder).")
    data = load_any(script_args.dataset_name, script_args.dataset_config, split=None,
                    **({"streaming": True} if script_args.dataset_streaming else {}))
    if not hasattr(data, "keys"):  # a single Dataset
        return data, None
    if script_args.dataset_train_split not in data:
        raise SystemExit(f"error: dataset has no split '{script_args.dataset_train_split}' (splits: {list(data)}).")
    train = data[script_args.dataset_train_split]
    evaluate = getattr(training_args, "eval_strategy", "no") != "no"
    eval_ds = data.get(script_args.dataset_test_split) if evaluate else None
    return train, eval_ds


def save_run(trainer, output_dir: str, seconds: float | None = None) -> None:
    """Save the final model and tokenizer, the log history as ``train_log.jsonl`` (one JSON object a line) and the
    logged curves as ``curves.png``; with the run's ``seconds``, print its summary (``summary.py``)."""
    from ..trainers.base import write_log
    from .summary import CURVES_NAME, plot_curves, summarize

    trainer.save_model(output_dir)
    if trainer.is_world_process_zero():
        log_file = write_log(trainer.state.log_history, output_dir)
        curves_file = plot_curves(trainer.state.log_history, os.path.join(output_dir, CURVES_NAME))
        if seconds is not None:
            print(summarize(trainer, output_dir, seconds, log_file, curves_file), flush=True)


def parse_classes(classes, argv: list[str] | None, prog: str):
    """Instances of the dataclasses ``classes`` from the command line and an optional ``--config`` YAML file."""
    from .args import PosttrainParser

    return PosttrainParser(classes, prog=prog).parse_args_and_config(argv)


def parse(config_class, argv: list[str] | None, prog: str, script_class=None):
    """(script_args, training_args, model_args) from the command line and an optional ``--config`` YAML file.
    ``script_class`` replaces :class:`~posttrain.scripts.args.ScriptArguments` (a subclass of it) for scripts
    with options of their own."""
    from .args import ScriptArguments

    return parse_classes((script_class or ScriptArguments, config_class, ModelConfig), argv, prog)


def train(trainer_class, script_args, training_args, model_args: ModelConfig, *, auto_class=None,
          model_kwargs: dict | None = None, **trainer_kwargs):
    """The body of every training script: load model, tokenizer and data, train, save model and log."""
    from ..models import peft_config

    setup_logging(training_args)
    model, tokenizer = load_model_and_tokenizer(model_args, auto_class, **(model_kwargs or {}))
    train_ds, eval_ds = load_splits(script_args, training_args)
    trainer = trainer_class(model=model, args=training_args, train_dataset=train_ds, eval_dataset=eval_ds,
                            processing_class=tokenizer, peft_config=peft_config(model_args), **trainer_kwargs)
    started = time.monotonic()
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    save_run(trainer, training_args.output_dir, time.monotonic() - started)
    return trainer


def run_example(main, default_dataset: str, argv: list[str] | None = None) -> int:
    """Entry point of an ``examples/scripts`` file: the script's ``main`` with the example's default dataset
    (the hub dataset the TRL example uses) unless ``--dataset_name`` or ``--config`` is given."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a in ("--dataset_name", "--config") or a.startswith(("--dataset_name=", "--config=")) for a in argv):
        argv += ["--dataset_name", default_dataset]
    return main(argv)
