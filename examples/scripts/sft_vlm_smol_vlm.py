"""Supervised fine-tuning of SmolVLM on images with SFTTrainer — the same script as `posttrain sft`.

SmolVLM (HuggingFaceTB/SmolVLM-Instruct) is an Idefics3 model: a SigLIP vision tower, a pixel-shuffle connector and
a SmolLM2 language model. Its processor (Idefics3Processor) splits each image into tiles of 384 pixels plus a
downscaled copy of the whole image, and writes each one as `<fake_token_around_image>`, a tag (`<row_1_col_1>`, ...,
`<global-img>`) and its image tokens, with newlines between rows of tiles. posttrain's collator takes those tokens as
the processor writes them and never trains on them, nor on padding; the loss masks (completion-only, assistant-only)
apply to the text around them, and `--max_length` cuts text only, never an image (docs/sft.md, "Vision-language
models"). Tiles make long rows (a 640x480 photo: 12 tiles plus the whole image, over a thousand tokens), hence
`--max_length 2048` below; the processor's `size` (longest edge) bounds the number of tiles. Batches are padded: no
`--packing`, no `--padding_free`.

One device (default dataset: HuggingFaceH4/llava-instruct-mix-vsft, conversations with images):
    python examples/scripts/sft_vlm_smol_vlm.py --model_name_or_path HuggingFaceTB/SmolVLM-Instruct \
        --dtype bfloat16 --output_dir SmolVLM-Instruct-sft --learning_rate 2e-5 --per_device_train_batch_size 2 \
        --gradient_accumulation_steps 8 --gradient_checkpointing --max_length 2048 --num_train_epochs 1

LoRA: add `--use_peft --lora_r 16 --lora_alpha 32 --lora_target_modules q_proj k_proj v_proj o_proj`.

Offline, on the tiny kit (a 0.17M-parameter Idefics3 that splits each 32x32 image into 2x2 tiles plus the whole
image, 4 image tokens each, and learns to name the colour of an image):
    posttrain kit build-model --arch smolvlm --output_dir /tmp/tiny-smolvlm
    posttrain kit make-data --task colors --format prompt_completion --conversational --n 300 \
        --output /tmp/colors.parquet
    python examples/scripts/sft_vlm_smol_vlm.py --model_name_or_path /tmp/tiny-smolvlm \
        --dataset_name /tmp/colors.parquet --output_dir /tmp/smolvlm-colors --max_steps 80 --learning_rate 3e-3 \
        --per_device_train_batch_size 16 --lr_scheduler_type cosine --warmup_steps 10
"""

from posttrain.scripts.common import run_example
from posttrain.scripts.sft import main

DEFAULT_DATASET = "HuggingFaceH4/llava-instruct-mix-vsft"

if __name__ == "__main__":
    raise SystemExit(run_example(main, DEFAULT_DATASET))
