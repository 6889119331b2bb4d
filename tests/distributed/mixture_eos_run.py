"""Nash-MD's mixture sampling under ZeRO-3 when the processes' completions end at different steps.

    accelerate launch --config_file deepspeed_zero3.yaml --num_processes 2 mixture_eos_run.py MODEL OUT

Process 0 declares the token its greedy completions start with to be EOS, so they end after one token while process
1's go on for all 12. transformers keeps a finished ZeRO-3 process stepping the policy (synced_gpus) but skips its
logits processors, where the mixture's partitioned reference runs; `posttrain.rollout.generate` must not let that
reference wait for a process that no longer calls it. Each process writes its completion lengths to OUT/rank<i>.json.
"""

import json
import os
import sys

import posttrain
from posttrain.kit import make_dataset
from posttrain.rollout import generate


def main(model_dir, out):
    args = posttrain.NashMDConfig(output_dir=out, max_new_tokens=12, top_k=1, report_to=[], bf16=False,
                                  per_device_train_batch_size=4, max_steps=1)
    data = make_dataset("reverse", "prompt_only", n=32, seed=3, min_len=3, max_len=5)
    trainer = posttrain.NashMDTrainer(model_dir, args=args, train_dataset=data,
                                      reward_funcs=lambda completions, **kw: [0.0] * len(completions))
    # wrap the policy in its DeepSpeed engine, as training does (the reference already is an engine)
    trainer.model, trainer.optimizer = trainer.accelerator.prepare(trainer.model, trainer.create_optimizer())
    rank, tok, sampling = trainer.accelerator.process_index, trainer.tokenizer_, trainer.sampling_kwargs()
    prompts = [trainer.train_dataset[rank]["prompt_input_ids"]] * 4
    greedy = generate(trainer.model, tok, prompt_ids=prompts, batch_size=4, **sampling).completion_ids[0]
    if rank == 0:
        tok.eos_token_id = greedy[0]
    gens = generate(trainer.model, tok, prompt_ids=prompts, batch_size=4, mixture_ref=trainer.ref_model,
                    mixture_coef=0.5, **sampling)
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"greedy": greedy, "lengths": [len(c) for c in gens.completion_ids]}, f)


if __name__ == "__main__":
    main(*sys.argv[1:3])
    # DeepSpeed (ZeRO-3, CPU) runs still abort now and then at interpreter teardown ("terminate called without an
    # active exception") after the process group was destroyed by posttrain's exit hook and every result was written
    # (2 of ~16 ZeRO-3 launches in one suite run): leave without the teardown (docs/distributed.md, "Process exit").
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
