"""Generalized knowledge distillation with GKDTrainer — the same script as `posttrain gkd`.

Distil a larger instruct model into a smaller one with the same tokenizer (default dataset:
trl-lib/chatbot_arena_completions, conversations; default teacher: Qwen/Qwen2-1.5B-Instruct):
    accelerate launch examples/scripts/gkd.py \
        --model_name_or_path Qwen/Qwen2-0.5B-Instruct --teacher_model_name_or_path Qwen/Qwen2-1.5B-Instruct \
        --dataset_name trl-lib/chatbot_arena_completions --output_dir Qwen2-0.5B-GKD \
        --learning_rate 2e-5 --per_device_train_batch_size 4 --gradient_accumulation_steps 8 \
        --lmbda 0.5 --beta 0.5 --max_new_tokens 256 --num_train_epochs 1 --logging_steps 10

LoRA student: add `--use_peft --lora_r 64 --lora_alpha 16`.

Offline, on the tiny kit (the teacher is a kit model fine-tuned with SFT; see docs/gkd.md):
    posttrain kit build-model --arch qwen2 --size small --output_dir /tmp/small
    posttrain kit make-data --task reverse --format prompt_completion --n 4000 --task-arg min_len=3 \
        --task-arg max_len=5 --output /tmp/reverse.jsonl
    posttrain sft --model_name_or_path /tmp/small --dataset_name /tmp/reverse.jsonl --output_dir /tmp/teacher \
        --max_steps 300 --learning_rate 2e-3 --per_device_train_batch_size 32 --report_to none
    posttrain kit build-model --arch qwen2 --size small --seed 1 --output_dir /tmp/student
    python examples/scripts/gkd.py --model_name_or_path /tmp/student --teacher_model_name_or_path /tmp/teacher \
        --dataset_name /tmp/reverse.jsonl --output_dir /tmp/gkd --max_steps 150 --learning_rate 2e-3 \
        --per_device_train_batch_size 32 --lmbda 0.5 --beta 0 --temperature 1 --max_new_tokens 12 --report_to none
"""

import sys

from posttrain.scripts.common import run_example
from posttrain.scripts.gkd import main

DEFAULT_DATASET = "trl-lib/chatbot_arena_completions"
DEFAULT_TEACHER = "Qwen/Qwen2-1.5B-Instruct"


def with_default_teacher(argv):
    """The example's teacher unless ``--teacher_model_name_or_path`` or ``--config`` is given."""
    if not any(a.split("=")[0] in ("--teacher_model_name_or_path", "--config") for a in argv):
        argv = argv + ["--teacher_model_name_or_path", DEFAULT_TEACHER]
    return argv


if __name__ == "__main__":
    raise SystemExit(run_example(main, DEFAULT_DATASET, with_default_teacher(sys.argv[1:])))
