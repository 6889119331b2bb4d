"""Nash Mirror Descent with NashMDTrainer — the same script as `posttrain nash-md`.

The policy's completion against one from the geometric mixture of policy and reference, judged by a reward model
(default dataset: trl-lib/ultrafeedback-prompt, prompt-only):
    accelerate launch examples/scripts/nash_md.py \
        --model_name_or_path trl-lib/pythia-1b-deduped-tldr-sft --reward_model_path trl-lib/pythia-1b-deduped-tldr-rm \
        --dataset_name trl-lib/tldr --learning_rate 5.0e-7 --output_dir pythia-1b-tldr-nash-md \
        --per_device_train_batch_size 4 --gradient_accumulation_steps 32 --num_train_epochs 3 \
        --max_new_tokens 64 --warmup_ratio 0.1 --missing_eos_penalty 1.0 --mixture_coef 0.5 --logging_steps 10

By a judge instead: `--judge openai` or `--judge PATH` (a local causal LM; its probabilities are used). LoRA:
`--use_peft --lora_r 64`.

Offline, on the tiny kit (see examples/scripts/dpo_online.py for the SFT model and prompt files):
    python examples/scripts/nash_md.py --model_name_or_path /tmp/rev_sft --dataset_name /tmp/rev_prompts.jsonl \
        --reward_funcs accuracy --output_dir /tmp/rev_nash_md --max_steps 60 --per_device_train_batch_size 32 \
        --max_new_tokens 12 --temperature 1.0 --beta 0.05 --learning_rate 6e-4 \
        --lr_scheduler_type constant_with_warmup --warmup_steps 10
"""

from posttrain.scripts.common import run_example
from posttrain.scripts.nash_md import main

DEFAULT_DATASET = "trl-lib/ultrafeedback-prompt"

if __name__ == "__main__":
    raise SystemExit(run_example(main, DEFAULT_DATASET))
