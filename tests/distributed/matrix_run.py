"""One short training run of a trainer family, for the set-up matrix (tests/trainers/test_distributed_matrix.py).

    python matrix_run.py FAMILY MODEL OUT PER_DEVICE_BATCH [extra config as JSON]          # one process
    accelerate launch --config_file CFG --num_processes 2 matrix_run.py FAMILY MODEL OUT 4  # DDP / ZeRO / FSDP

Trains ``max_steps`` steps, saves the final model to OUT/model with ``trainer.save_model`` (under ZeRO-3 the
consolidated 16-bit state dict) and, on the main process, writes the log history and the set-up it really ran
under to OUT/log.json.

A trainer family joins the matrix with one entry in FAMILIES (and its model fixture in the test's MODEL_FIXTURES):
(config class, trainer class, dataset maker, the auto class that loads its saved model, extra config).
"""

import json
import os
import sys

import torch
from transformers import TrainerCallback

import posttrain
from posttrain.kit import make_dataset
from posttrain.rollout import LLMPairwiseJudge


def _sft_data():
    return make_dataset("reverse", "prompt_completion", n=256, seed=0)


def _preference_data():
    return make_dataset("sort", "preference", n=64, seed=0)


def _prompt_data():
    return make_dataset("reverse", "prompt_only", n=32, seed=3, min_len=3, max_len=5)


def _stepwise_data():
    return make_dataset("sort", "stepwise", n=8, seed=0)  # the same 8 rows every step: the loss falls


def position_reward(prompts, completions, completion_ids, **kwargs):
    """Deterministic toy reward that differs within a group even for identical completions: low token ids are
    better, plus a small bonus by position in the group (the batch arrives in group layout)."""
    return [-sum(ids) / (1024.0 * max(len(ids), 1)) + 0.1 * (i % 4) for i, ids in enumerate(completion_ids)]


# family -> (config class name, trainer class name, dataset, model auto class, extra config[, trainer kwargs])
FAMILIES = {
    "sft": ("SFTConfig", "SFTTrainer", _sft_data, "AutoModelForCausalLM", {}),
    "dpo": ("DPOConfig", "DPOTrainer", _preference_data, "AutoModelForCausalLM", {}),
    "reward": ("RewardConfig", "RewardTrainer", _preference_data, "AutoModelForSequenceClassification", {}),
    # greedy sampling (top_k=1), so one process and two generate the same completions; beta > 0: a reference model
    "grpo": ("GRPOConfig", "GRPOTrainer", _prompt_data, "AutoModelForCausalLM",
             {"num_generations": 4, "max_completion_length": 8, "top_k": 1, "beta": 0.04},
             {"reward_funcs": position_reward}),
    # RLOO: k=4 greedy completions per prompt, beta > 0 folds the KL to a reference into the reward
    "rloo": ("RLOOConfig", "RLOOTrainer", _prompt_data, "AutoModelForCausalLM",
             {"num_generations": 4, "max_completion_length": 8, "top_k": 1, "beta": 0.04},
             {"reward_funcs": position_reward}),
    # PPO: the policy and a value model (pass "value_model": PATH in the extra config), one PPO epoch per rollout
    "ppo": ("PPOConfig", "PPOTrainer", _prompt_data, "AutoModelForCausalLM",
            {"max_completion_length": 8, "top_k": 1, "kl_coef": 0.04, "num_ppo_epochs": 1},
            {"reward_funcs": position_reward}),
    "orpo": ("ORPOConfig", "ORPOTrainer", _preference_data, "AutoModelForCausalLM", {}),
    # KTO with its reference model (paired rows are unpaired into desirable/undesirable ones)
    "kto": ("KTOConfig", "KTOTrainer", _preference_data, "AutoModelForCausalLM", {}),
    # BCO: KTO's data and reference, the running reward mean gathered from every process
    "bco": ("BCOConfig", "BCOTrainer", _preference_data, "AutoModelForCausalLM", {}),
    "cpo": ("CPOConfig", "CPOTrainer", _preference_data, "AutoModelForCausalLM", {}),
    "prm": ("PRMConfig", "PRMTrainer", _stepwise_data, "AutoModelForTokenClassification", {}),
    # GKD on the dataset's completions (lmbda=0: nothing sampled, so the steps are comparable); the teacher comes as
    # "teacher_model_name_or_path" in the extra config
    "gkd": ("GKDConfig", "GKDTrainer", _sft_data, "AutoModelForCausalLM", {"lmbda": 0.0}),
    # the pairwise online trainers: per_device_train_batch_size counts prompts (2 greedy completions each); the
    # position bonus always prefers the second completion of a pair. Online DPO also sums a reward model's score
    # (pass "reward_model": PATH in the extra config)
    "online_dpo": ("OnlineDPOConfig", "OnlineDPOTrainer", _prompt_data, "AutoModelForCausalLM",
                   {"max_new_tokens": 8, "top_k": 1}, {"reward_funcs": position_reward}),
    "xpo": ("XPOConfig", "XPOTrainer", _prompt_data, "AutoModelForCausalLM",
            {"max_new_tokens": 8, "top_k": 1, "alpha": 0.1}, {"reward_funcs": position_reward}),
    # Nash-MD with a local LM judge's probabilities (pass "judge_model": PATH in the extra config)
    "nash_md": ("NashMDConfig", "NashMDTrainer", _prompt_data, "AutoModelForCausalLM",
                {"max_new_tokens": 8, "top_k": 1}),
}


class InOrderJudge(LLMPairwiseJudge):
    """A local LM judge that shows every pair in its given order: its random order flips are drawn per process, so
    2 processes would flip other pairs than one process does."""

    def judge(self, prompts, completions, shuffle_order=True, return_scores=False):
        return super().judge(prompts, completions, shuffle_order=False, return_scores=return_scores)


def local_judge(path):
    """An LM judge loaded after the config, like the trained model (under ZeRO-3: partitioned)."""
    from transformers import AutoModelForCausalLM

    from posttrain.models import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return InOrderJudge(model, load_tokenizer(path), system_prompt="{prompt} | 0: {response0} | 1: {response1} | best:")


class CountSteps(TrainerCallback):
    """Counts the optimizer steps this process ran (a resumed run runs only the remaining ones)."""

    steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1


class KillAfterCheckpoint(TrainerCallback):
    """Ends every process abruptly (exit status 3, nothing cleaned up) once the checkpoint of step N is saved."""

    def __init__(self, step):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            sys.stdout.flush()
            os._exit(3)


def main(argv):
    family, model_dir, out, per_device_batch = argv[0], argv[1], argv[2], int(argv[3])
    extra = json.loads(argv[4]) if len(argv) > 4 else {}
    config_name, trainer_name, data, _, family_extra, *trainer_kwargs = FAMILIES[family]
    config_cls, trainer_cls = getattr(posttrain, config_name), getattr(posttrain, trainer_name)
    torch.manual_seed(0)
    kwargs = dict(output_dir=out, max_steps=4, per_device_train_batch_size=per_device_batch, learning_rate=3e-3,
                  logging_steps=1, report_to=[], save_strategy="no", disable_tqdm=True, seed=0,
                  dataloader_num_workers=0, bf16=False)  # fp32, as the launched runs (--mixed_precision no)
    kwargs.update(family_extra)
    kwargs.update(extra)
    resume = kwargs.pop("resume_from_checkpoint", None)
    kill_after = kwargs.pop("kill_after_checkpoint", None)
    value_model = kwargs.pop("value_model", None)
    reward_model = kwargs.pop("reward_model", None)
    judge_model = kwargs.pop("judge_model", None)
    args = config_cls(**kwargs)  # before the model is loaded: ZeRO-3 then loads it already partitioned
    trainer_kwargs = dict(trainer_kwargs[0]) if trainer_kwargs else {}
    if reward_model is not None:
        trainer_kwargs["reward_model"] = reward_model
    if judge_model is not None:
        trainer_kwargs["judge"] = local_judge(judge_model)
    if family == "ppo":  # PPOTrainer's first argument is args (TRL's order); it also trains a value model
        trainer = trainer_cls(args=args, model=model_dir, value_model=value_model, train_dataset=data(),
                              **trainer_kwargs)
    else:
        trainer = trainer_cls(model_dir, args=args, train_dataset=data(), **trainer_kwargs)
    counter = CountSteps()
    trainer.add_callback(counter)
    if kill_after is not None:
        trainer.add_callback(KillAfterCheckpoint(kill_after))
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(os.path.join(out, "model"))
    if trainer.is_world_process_zero():
        setup = {"num_processes": trainer.accelerator.num_processes,
                 "distributed_type": str(trainer.accelerator.distributed_type),
                 "zero_stage": (trainer.accelerator.state.deepspeed_plugin.zero_stage
                                if trainer.is_deepspeed_enabled else None),
                 "device": str(trainer.args.device), "steps_run": counter.steps}
        frozen = {name: getattr(trainer, name, None) for name in ("ref_model", "teacher_model")}
        frozen["judge_model"] = getattr(getattr(trainer, "judge", None), "model", None)
        scorer = getattr(trainer, "scorer", None)
        models = [f for f in (scorer.reward_funcs if scorer is not None else []) if isinstance(f, torch.nn.Module)]
        frozen.update({f"reward_model{i}": m for i, m in enumerate(models)})
        for name, model in frozen.items():
            if model is not None:
                setup[f"{name}_type"] = type(model).__name__
                setup[f"{name}_local_numel"] = sum(p.numel() for p in model.parameters())
                setup[f"{name}_numel"] = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
        with open(os.path.join(out, "log.json"), "w") as f:
            json.dump({"log": trainer.state.log_history, "setup": setup}, f)


if __name__ == "__main__":
    main(sys.argv[1:])
    # DeepSpeed (ZeRO-3, CPU) runs still abort now and then at interpreter teardown ("terminate called without an
    # active exception") after the process group was destroyed by posttrain's exit hook and every result was written
    # (2 of ~16 ZeRO-3 launches in one suite run): leave without the teardown (docs/distributed.md, "Process exit").
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
