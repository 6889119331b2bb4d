"""Binary Classifier Optimization with BCOTrainer — the same script as `posttrain bco`.

Default dataset: trl-lib/hh-rlhf-helpful-base (Anthropic HH helpful pairs, unpaired automatically):
    accelerate launch examples/scripts/bco.py \
        --model_name_or_path Qwen/Qwen2-0.5B-Instruct --dataset_name trl-lib/hh-rlhf-helpful-base \
        --output_dir Qwen2-0.5B-BCO --learning_rate 5e-7 --per_device_train_batch_size 8 \
        --gradient_accumulation_steps 4 --num_train_epochs 1 --beta 0.1

UDM density-ratio weights need a prompt embedding function and are set up from Python
(`BCOTrainer(..., embedding_func=model_embedding_func(embedding_model))`); this script trains without them.

Offline, on the tiny kit:
    posttrain kit build-model --arch qwen2 --size tiny --output_dir /tmp/tiny
    posttrain kit make-data --task sort --format preference --n 2000 --seed 0 --output /tmp/sort_pairs.jsonl
    python examples/scripts/bco.py --model_name_or_path /tmp/tiny --dataset_name /tmp/sort_pairs.jsonl \
        --output_dir /tmp/bco --max_steps 300 --learning_rate 1e-3 --beta 0.5 --per_device_train_batch_size 16 \
        --lr_scheduler_type constant
"""

from posttrain.scripts.common import run_example
from posttrain.scripts.bco import main

DEFAULT_DATASET = "trl-lib/hh-rlhf-helpful-base"

if __name__ == "__main__":
    raise SystemExit(run_example(main, DEFAULT_DATASET))
