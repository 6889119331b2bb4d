"""Online DPO with OnlineDPOTrainer — the same script as `posttrain online-dpo`.

Pairs ranked by a reward model (default dataset: trl-lib/ultrafeedback-prompt, prompt-only):
    accelerate launch examples/scripts/dpo_online.py \
        --model_name_or_path Qwen/Qwen2-0.5B-Instruct --reward_model_path trl-lib/Qwen2-0.5B-Reward \
        --dataset_name trl-lib/ultrafeedback-prompt --learning_rate 5.0e-7 --output_dir Qwen2-0.5B-Online-DPO \
        --per_device_train_batch_size 8 --gradient_accumulation_steps 16 --warmup_ratio 0.1 \
        --missing_eos_penalty 1.0 --logging_steps 10

By a judge instead: `--judge openai` (an OpenAI-compatible endpoint, OPENAI_BASE_URL / OPENAI_API_KEY) or
`--judge PATH` (a local causal LM asked which answer is better). LoRA: add `--use_peft --lora_r 64 --lora_alpha 16`.

Offline, on the tiny kit (an SFT'd small model; the exact-answer reward ranks the pairs):
    posttrain kit build-model --arch qwen2 --size small --output_dir /tmp/small
    posttrain kit make-data --task reverse --format prompt_completion --n 4000 --seed 0 --output /tmp/rev_sft.jsonl
    posttrain kit make-data --task reverse --format prompt_only --n 1024 --seed 5 --output /tmp/rev_prompts.jsonl
    posttrain sft --model_name_or_path /tmp/small --dataset_name /tmp/rev_sft.jsonl --output_dir /tmp/rev_sft \
        --max_steps 140 --per_device_train_batch_size 32 --learning_rate 2e-3 --lr_scheduler_type cosine \
        --warmup_steps 20 --padding_free
    python examples/scripts/dpo_online.py --model_name_or_path /tmp/rev_sft --dataset_name /tmp/rev_prompts.jsonl \
        --reward_funcs accuracy --output_dir /tmp/rev_online_dpo --max_steps 60 --per_device_train_batch_size 32 \
        --max_new_tokens 12 --temperature 1.0 --beta 0.5 --learning_rate 3e-4 \
        --lr_scheduler_type constant_with_warmup --warmup_steps 10
"""

from posttrain.scripts.common import run_example
from posttrain.scripts.online_dpo import main

DEFAULT_DATASET = "trl-lib/ultrafeedback-prompt"

if __name__ == "__main__":
    raise SystemExit(run_example(main, DEFAULT_DATASET))
