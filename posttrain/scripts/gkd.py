"""Generalized knowledge distillation (GKD) from the command line.

    posttrain gkd --model_name_or_path STUDENT --teacher_model_name_or_path TEACHER --dataset_name DATA \
        --output_dir OUT [GKDConfig options: --lmbda --beta --temperature --max_new_tokens --seq_kd]
    posttrain gkd --config gkd.yaml --lmbda 1.0
    python -m posttrain.scripts.gkd ...          # the same

STUDENT and TEACHER are hub ids or local folders sharing one tokenizer; DATA is prompt-completion data or
conversations (``messages`` ending with the assistant's answer): a hub id, a local json/jsonl/parquet/csv
file or a saved dataset folder. The teacher is loaded with the student's ``--dtype``,
``--attn_implementation`` and ``--trust_remote_code`` unless ``--teacher_model_init_kwargs`` is given.
"""

from __future__ import annotations

from ..models import ModelConfig
from ..trainers.gkd import GKDConfig, GKDTrainer
from .common import parse, train


def teacher_init_kwargs(model_args: ModelConfig) -> dict:
    """``from_pretrained`` arguments of the teacher implied by the student's model arguments."""
    kwargs = {"dtype": model_args.dtype, "trust_remote_code": model_args.trust_remote_code}
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    return kwargs


def main(argv: list[str] | None = None) -> int:
    script_args, training_args, model_args = parse(GKDConfig, argv, "posttrain gkd")
    if not training_args.teacher_model_name_or_path:
        raise SystemExit("error: --teacher_model_name_or_path is required (a hub id or a local model folder with the "
                         "student's tokenizer).")
    if training_args.teacher_model_init_kwargs is None:
        training_args.teacher_model_init_kwargs = teacher_init_kwargs(model_args)
    train(GKDTrainer, script_args, training_args, model_args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
