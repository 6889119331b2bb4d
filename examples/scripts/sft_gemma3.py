"""SFT of a Gemma 3 text model with SFTTrainer (the same script as `posttrain sft`).

The seed's set-up:
    accelerate launch examples/scripts/sft_gemma3.py --model_name_or_path google/gemma-3-1b-it \
        --dataset_name trl-lib/Capybara --output_dir gemma-3-1b-sft --max_length 2048 --per_device_train_batch_size 1 \
        --gradient_accumulation_steps 8 --learning_rate 2e-5 --bf16 --gradient_checkpointing

Gemma 3's local layers attend within a sliding window (512 tokens for the 1B model, one global layer in six);
posttrain's padding-free batches and per-sequence attention apply the window to each sequence, so packing and
padding-free training keep the padded batch's results (tests/data/test_packing.py). Gemma 3 checkpoints are stored in
bf16: `--dtype bfloat16` loads them as such.

Offline, on the kit's tiny Gemma 3:
    posttrain kit build-model --arch gemma3 --size tiny --output_dir /tmp/tiny-gemma3
    posttrain kit make-data --task reverse --format prompt_completion --n 2000 --output /tmp/reverse.jsonl
    python examples/scripts/sft_gemma3.py --model_name_or_path /tmp/tiny-gemma3 --dataset_name /tmp/reverse.jsonl \
        --output_dir /tmp/gemma3-sft --max_steps 200 --learning_rate 3e-3 --per_device_train_batch_size 32
"""

from posttrain.scripts.common import run_example
from posttrain.scripts.sft import main

DEFAULT_DATASET = "trl-lib/Capybara"

if __name__ == "__main__":
    raise SystemExit(run_example(main, DEFAULT_DATASET))
