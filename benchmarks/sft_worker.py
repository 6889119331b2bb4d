"""One SFT benchmark run (called by benchmarks/sft.py in a fresh process). Prints one JSON line."""

import json
import sys
import time

import torch


def main(config: dict) -> dict:
    from transformers import TrainerCallback

    from benchmarks.common import chat_dataset, peak_rss_mb
    from posttrain import SFTConfig, SFTTrainer
    from posttrain.kit import build_tiny_model, load_tokenizer

    torch.set_num_threads(config.get("threads", 2))
    tokenizer = load_tokenizer()
    data = chat_dataset(config["examples"], seed=0)
    model = build_tiny_model("qwen2", size=config["size"], seed=0)
    args = SFTConfig(output_dir="/tmp/posttrain-bench-sft", max_steps=config["steps"], per_device_train_batch_size=config["batch_size"],
                     max_length=config["max_length"], packing=config["packing"], padding_free=config.get("padding_free", False),
                     learning_rate=1e-4, logging_steps=1, report_to=[], save_strategy="no", disable_tqdm=True,
                     bf16=config.get("bf16", False))

    class Clock(TrainerCallback):
        start = None

        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == config["warmup_steps"] and self.start is None:
                self.start = time.perf_counter()

    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    clock = Clock()
    trainer.add_callback(clock)
    trainer.train()
    elapsed = time.perf_counter() - clock.start
    logs = [h for h in trainer.state.log_history if "loss" in h]
    tokens_at = {h["step"]: h["num_tokens"] for h in logs}
    timed_tokens = tokens_at[config["steps"]] - tokens_at[config["warmup_steps"]]
    return {"tokens_per_s": timed_tokens / elapsed, "peak_rss_mb": peak_rss_mb(), "first_loss": logs[0]["loss"],
            "last_loss": logs[-1]["loss"], "timed_tokens": timed_tokens, "seconds": elapsed}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
