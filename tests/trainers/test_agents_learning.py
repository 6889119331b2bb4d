"""Agents learn (docs/agents.md): GRPO against a multi-turn environment (in process, and served by a real OpenEnv
server) raises success and lowers the turns it takes. A tiny kit model on CPU, SFT'd once per module.

(A tool task's learning test is not here yet: a tiny model learns to copy a tool's result into its answer only after
~700 SFT steps, and not on every seed; docs/agents.md, "Learning tests".)"""

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM

from conftest import SEED, train_args
from agent_helpers import openenv_server
from posttrain import GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer
from posttrain.kit import build_tiny_model
from posttrain.kit.agents import GuessNumberEnv, guess_demo_rows, guess_prompt_rows
from posttrain.rollout.backends import DecodeBackend
from posttrain.rollout.openenv import OpenEnvEnvironment
from posttrain.trainers.agents import AgentRollouts

HIGH, MAX_GUESSES = 8, 4


def _sft(out, rows, tokenizer, steps, lr=2e-3):
    model = build_tiny_model("qwen2", size="small", seed=SEED)
    args = train_args(SFTConfig, out, max_steps=steps, per_device_train_batch_size=32, learning_rate=lr,
                      lr_scheduler_type="cosine", warmup_steps=20, logging_steps=50, padding_free=True,
                      assistant_only_loss=True)
    SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer).train()
    model.save_pretrained(out / "model")
    return out / "model"


def _rollouts(model, tokenizer, rows, agent, samples, max_completion_length, max_iterations):
    prepared = []
    for r in rows:
        ids = tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, return_dict=True,
                                            **agent.template_kwargs())["input_ids"]
        prepared += [{**r, "prompt_input_ids": list(ids)}] * samples
    model.eval()
    torch.manual_seed(SEED)
    with torch.no_grad():
        _, gens = agent.rollout(DecodeBackend(lambda: model, tokenizer).generate, prepared, tokenizer=tokenizer,
                                config_template_kwargs=None, max_prompt_length=None,
                                max_completion_length=max_completion_length, max_iterations=max_iterations,
                                return_logprobs=False, temperature=1.0, do_sample=True)
    return prepared, gens


# ------------------------------------------------------------------------------------------------
# a multi-turn environment
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guess_sft_dir(tmp_path_factory, tokenizer):
    """A small model SFT'd on guessing games played half by bisection, half blind to the feedback (about 70 s)."""
    return _sft(tmp_path_factory.mktemp("guess-sft"), guess_demo_rows(3000, HIGH, SEED), tokenizer, steps=300)


def play(model, tokenizer, factory, samples=4):
    """On 64 held-out games (temperature 1): the success rate, the turns to solve (guesses until found, a game lost
    counting MAX_GUESSES + 1, so that winning a lost game late is not read as slower play) and the mean reward."""
    agent = AgentRollouts(None, factory)
    _rollouts(model, tokenizer, guess_prompt_rows(64, HIGH, seed=100), agent, samples, 64, MAX_GUESSES - 1)
    games = agent.batch_environments
    solved = [g for g in games if g.solved]
    reward = sum(1 - 0.1 * (g.guesses - 1) for g in solved) / len(games)
    turns = sum(g.guesses if g.solved else MAX_GUESSES + 1 for g in games) / len(games)
    return len(solved) / len(games), turns, reward


def _grpo_game(model, tokenizer, tmp_path, factory):
    args = train_args(GRPOConfig, tmp_path, num_generations=8, max_completion_length=64, per_device_train_batch_size=64,
                      max_steps=60, learning_rate=3e-4, lr_scheduler_type="constant_with_warmup", warmup_steps=5,
                      logging_steps=10, max_tool_calling_iterations=MAX_GUESSES - 1)
    trainer = GRPOTrainer(model, args=args, train_dataset=Dataset.from_list(guess_prompt_rows(1024, HIGH, seed=5 + SEED)),
                          processing_class=tokenizer, environment_factory=factory)
    trainer.train()
    return trainer


@pytest.mark.parametrize("served", [False, True], ids=["in_process", "openenv_server"])
def test_grpo_learns_multi_turn_environment(served, guess_sft_dir, tokenizer, tmp_path):
    """Guess a number from 1 to 8 in 4 guesses, with higher/lower feedback (GuessNumberEnv: reward 1 - 0.1 per extra
    guess). GRPO on the environment's reward alone raises the held-out success rate by >= 0.1 and lowers the turns to
    solve (a lost game counting 5) by >= 0.2, in process and against the kit's OpenEnv server.
    Margins over training seeds 0/1/2 (the same in process and on the server): success +0.22 / +0.15 / +0.25, turns
    to solve -0.43 / -0.43 / -0.51 (docs/agents.md, "Learning tests")."""
    model = AutoModelForCausalLM.from_pretrained(guess_sft_dir)
    with openenv_server(HIGH, MAX_GUESSES) if served else _no_server() as url:
        factory = (lambda: OpenEnvEnvironment(url)) if served else (lambda: GuessNumberEnv(HIGH, MAX_GUESSES))
        local = lambda: GuessNumberEnv(HIGH, MAX_GUESSES)  # noqa: E731 (held-out games are played in process)
        success0, turns0, reward0 = play(model, tokenizer, local)
        trainer = _grpo_game(model, tokenizer, tmp_path, factory)
        success1, turns1, reward1 = play(model, tokenizer, local)
    name = "rewards/OpenEnvEnvironment/mean" if served else "rewards/GuessNumberEnv/mean"
    curve = [round(h[name], 3) for h in trainer.state.log_history if name in h]
    print(f"GRPO guess-the-number ({'OpenEnv server' if served else 'in process'}): success {success0:.3f} -> "
          f"{success1:.3f}, turns to solve {turns0:.2f} -> {turns1:.2f}, reward {reward0:.3f} -> {reward1:.3f}, "
          f"training reward {curve}")
    assert success1 - success0 >= 0.1, (success0, success1, curve)
    assert turns0 - turns1 >= 0.2, (turns0, turns1)
    assert curve[-1] > curve[0], curve


class _no_server:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
