"""posttrain at real shapes: peak memory and speed of one training step against sequence length and vocabulary size,
with the fused output head and without it (issue 20).

    .venv/bin/python benchmarks/real_shapes.py [--trainers sft dpo grpo] [--lengths 512 1024 2048 4096]
                                               [--vocabs 151936 262144] [--batch 1] [--heads fused unfused]

The model has Qwen2.5-0.5B's widths (hidden 896, 14/2 heads, MLP 4864, tied embedding, 2 layers) and the given
vocabulary, random weights, float32, built in the worker (nothing on disk). Every point is a fresh process
(``run_isolated``): the model, its AdamW state and then ``steps`` training steps (the first is warm-up) on rows of
exactly ``length`` tokens: SFT ``batch`` sequences (loss on the second half); DPO ``batch`` pairs, each side a
``length / 4`` prompt and a completion filling the rest; GRPO ``batch`` (at least 2: one group) completions filling
the rest after a ``length / 4`` prompt, fixed (no sampling: the step is the loss). Reported: peak RSS,
the model state (parameters x 16 bytes: fp32 weights, gradients, two AdamW moments), the memory above it, and
tokens/s of the timed steps. ``unfused`` runs the head on the selected positions and takes log-probs from the
(tokens, vocabulary) logits (the harness patches ``fused_head_supported``; posttrain has no switch for it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import run_isolated  # noqa: E402

WORKER = str(Path(__file__).resolve())
QWEN = dict(hidden_size=896, num_hidden_layers=2, num_attention_heads=14, num_key_value_heads=2,
            intermediate_size=4864, tie_word_embeddings=True)


def worker(cfg: dict) -> dict:
    import resource

    import torch

    torch.set_num_threads(cfg.get("threads", 2))
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, Qwen2Config

    import posttrain
    import posttrain.trainers.logprobs as logprobs
    from posttrain.models import load_tokenizer

    if cfg["head"] == "unfused":
        logprobs.fused_head_supported = lambda model: False
    from posttrain.kit.models import extend_vocabulary

    tok = extend_vocabulary(load_tokenizer(cfg["tokenizer"]), cfg["vocab"])  # as a real checkpoint's tokenizer
    config = Qwen2Config(vocab_size=cfg["vocab"], max_position_embeddings=8192, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id, **QWEN)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    params = sum(p.numel() for p in model.parameters())
    n, batch, steps = cfg["length"], cfg["batch"], cfg["steps"]
    gen = torch.Generator().manual_seed(0)

    def ids(k):
        return torch.randint(3, 1000, (k,), generator=gen).tolist()  # kit-tokenizer ids: decodable, not special

    common = dict(output_dir=f"/tmp/posttrain-real-{cfg['trainer']}", report_to=[], save_strategy="no",
                  disable_tqdm=True, logging_steps=1, max_steps=steps, per_device_train_batch_size=batch,
                  learning_rate=1e-5, bf16=False, gradient_checkpointing=False, dataloader_num_workers=0)
    trainer_name = cfg["trainer"]
    if trainer_name == "sft":
        rows = [{"prompt_input_ids": ids(n // 2), "completion_input_ids": ids(n - n // 2)} for _ in range(batch * steps)]
        rows = [{"input_ids": r["prompt_input_ids"] + r["completion_input_ids"],
                 "completion_mask": [0] * (n // 2) + [1] * (n - n // 2)} for r in rows]
        args = posttrain.SFTConfig(max_length=n, completion_only_loss=True, **common)
        trainer = posttrain.SFTTrainer(model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
        tokens = batch * n
    elif trainer_name == "dpo":
        p = n // 4
        rows = [{"prompt_input_ids": ids(p), "chosen_input_ids": ids(n - p), "rejected_input_ids": ids(n - p)}
                for _ in range(batch * steps)]
        args = posttrain.DPOConfig(max_length=n, precompute_ref_log_probs=False, **common)
        trainer = posttrain.DPOTrainer(model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
        tokens = 2 * batch * n
    elif trainer_name == "grpo":
        from benchmarks.compare_worker import length_reward

        p = n // 4
        batch = max(batch, 2)  # a group needs two completions to compare (num_generations >= 2)
        prompts = [ids(p) for _ in range(batch * steps)]
        args = posttrain.GRPOConfig(max_completion_length=n - p, max_prompt_length=p, num_generations=batch,
                                    **dict(common, per_device_train_batch_size=batch))
        trainer = posttrain.GRPOTrainer(model, length_reward, args=args, processing_class=tok,
                                        train_dataset=Dataset.from_list([{"prompt_input_ids": x, "prompt": ""}
                                                                         for x in prompts]))
        completion = ids(n - p)

        def fixed(prompt_ids):  # every completion exactly n - p tokens, no sampling: the step is the loss
            from posttrain.rollout import Generations

            return Generations(prompt_ids=[list(x) for x in prompt_ids],
                               completion_ids=[list(completion) for _ in prompt_ids],
                               texts=[tok.decode(completion)] * len(prompt_ids))

        trainer.sample_completions = fixed
        tokens = batch * n
    else:
        raise ValueError(trainer_name)
    clock = {}

    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 1:
                clock["start"] = time.perf_counter()
            if state.global_step == steps:
                clock["stop"] = time.perf_counter()

    trainer.add_callback(Clock())
    trainer.train()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    state = params * 16 / 2**20
    return {"trainer": trainer_name, "head": cfg["head"], "length": n, "vocab": cfg["vocab"], "batch": batch,
            "params_m": params / 1e6, "peak_rss_mb": peak, "model_state_mb": state, "above_state_mb": peak - state,
            "tokens_per_s": tokens * (steps - 1) / (clock["stop"] - clock["start"]),
            "loss": trainer.state.log_history[0].get("loss")}


def main(argv=None) -> str:
    p = argparse.ArgumentParser(prog="real_shapes.py")
    p.add_argument("--trainers", nargs="+", default=["sft", "dpo", "grpo"])
    p.add_argument("--lengths", nargs="+", type=int, default=[512, 1024, 2048, 4096])
    p.add_argument("--vocabs", nargs="+", type=int, default=[151_936, 262_144])
    p.add_argument("--heads", nargs="+", default=["fused", "unfused"], choices=["fused", "unfused"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    from posttrain.kit import tokenizer_path

    lines = ["| trainer | vocabulary | length | head | peak RSS MB | model state MB | above state MB | tokens/s |",
             "|---|---|---|---|---|---|---|---|"]
    results = []
    for trainer in a.trainers:
        for vocab in a.vocabs:
            for length in a.lengths:
                for head in a.heads:
                    cfg = dict(trainer=trainer, vocab=vocab, length=length, head=head, batch=a.batch, steps=a.steps,
                               threads=a.threads, tokenizer=str(tokenizer_path()))
                    try:
                        r = run_isolated(WORKER, cfg, timeout=3600)
                    except RuntimeError as err:  # out of memory: say so in the table
                        print(str(err)[-500:], file=sys.stderr)
                        r = dict(cfg, peak_rss_mb=float("nan"), model_state_mb=float("nan"),
                                 above_state_mb=float("nan"), tokens_per_s=float("nan"))
                    results.append(r)
                    line = (f"| {trainer} | {vocab} | {length} | {head} | {r['peak_rss_mb']:.0f} | "
                            f"{r['model_state_mb']:.0f} | {r['above_state_mb']:.0f} | {r['tokens_per_s']:.1f} |")
                    print(line, flush=True)
                    lines.append(line)
    out = Path(__file__).resolve().parent / "out" / "real_shapes"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"real-shapes-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(results, indent=1))
    text = "\n".join(lines) + "\n"
    (out / "real-shapes-latest.md").write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1].startswith("{"):
        print(json.dumps(worker(json.loads(sys.argv[1]))))
    else:
        main(sys.argv[1:])
