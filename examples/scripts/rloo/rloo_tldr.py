"""RLOO: write better TL;DR summaries — the same script as `posttrain rloo`, with the seed's TL;DR defaults.

    accelerate launch examples/scripts/rloo/rloo_tldr.py \
        --model_name_or_path cleanrl/EleutherAI_pythia-1b-deduped__sft__tldr \
        --dataset_name trl-internal-testing/tldr-preference-sft-trl-style --dataset_test_split validation \
        --reward_model_path cleanrl/EleutherAI_pythia-1b-deduped__reward__tldr --output_dir pythia-1b-tldr-rloo \
        --num_generations 2 --learning_rate 3e-6 --per_device_train_batch_size 16 --max_completion_length 53

The dataset needs a ``prompt`` column (the post to summarise, ending with "TL;DR:"). Offline: the recipe of
examples/scripts/rloo/rloo.py with any local prompt file and a reward model trained with `posttrain reward` on
summary preference pairs.
"""

from posttrain.scripts.common import run_example
from posttrain.scripts.rloo import main

DEFAULT_DATASET = "trl-internal-testing/tldr-preference-sft-trl-style"

if __name__ == "__main__":
    raise SystemExit(run_example(main, DEFAULT_DATASET))
