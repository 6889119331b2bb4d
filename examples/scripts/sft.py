"""Supervised fine-tuning with SFTTrainer — the same script as `posttrain sft`.

One device:
    python examples/scripts/sft.py --model_name_or_path Qwen/Qwen2.5-0.5B --dataset_name trl-lib/Capybara \
        --output_dir Qwen2.5-0.5B-SFT --packing --learning_rate 2e-5

Offline, on the tiny kit:
    posttrain kit build-model --arch qwen2 --size tiny --output_dir /tmp/tiny
    posttrain kit make-data --task reverse --format prompt_completion --n 2000 --output /tmp/reverse.jsonl
    python examples/scripts/sft.py --model_name_or_path /tmp/tiny --dataset_name /tmp/reverse.jsonl \
        --output_dir /tmp/out --max_steps 200 --learning_rate 3e-3 --per_device_train_batch_size 32

LoRA: add `--use_peft --lora_r 16 --lora_alpha 32`; QLoRA: also `--load_in_4bit`.
"""

from posttrain.scripts.sft import main

if __name__ == "__main__":
    raise SystemExit(main())
