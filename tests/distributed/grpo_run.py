"""GRPO run used by the multi-process test:
`torchrun --nproc_per_node N grpo_run.py MODEL OUT PER_DEVICE_BATCH`.

Every process writes OUT/rank<i>.json: its completion samples per generation batch (prompt, reward, advantage),
its log history and a checksum of its final weights.
"""

import json
import sys

import torch

from posttrain import GRPOConfig, GRPOTrainer
from posttrain.kit import make_dataset

model_dir, out, per_device_batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(1)
train = make_dataset("copy", "prompt_only", n=32, seed=0)


def first_token_reward(prompts, completions, completion_ids, **kwargs):
    return [float(ids[0] % 5) for ids in completion_ids]


args = GRPOConfig(output_dir=out, max_steps=3, per_device_train_batch_size=per_device_batch, num_generations=8,
                  max_completion_length=6, learning_rate=1e-3, beta=0.04, logging_steps=1, report_to=[],
                  save_strategy="no", disable_tqdm=True, seed=0, dataloader_num_workers=0)
trainer = GRPOTrainer(model_dir, first_token_reward, args=args, train_dataset=train)
samples = []
real = trainer.generate_and_score


def recording(rows, num_chunks):
    batches = real(rows, num_chunks)
    samples.append(trainer.completion_samples)
    return batches


trainer.generate_and_score = recording
trainer.train()
checksum = float(sum(p.double().sum() for p in trainer.model.parameters()))
with open(f"{out}/rank{trainer.accelerator.process_index}.json", "w") as f:
    json.dump({"samples": samples, "log": trainer.state.log_history, "checksum": checksum,
               "world": trainer.accelerator.num_processes}, f)
