"""GRPO and RLOO with tools and environments (posttrain/trainers/agents.py): the inserted tokens are context, never
trained on; what is trained is exactly what was sampled; environments give rewards; bad set-ups fail early."""

import json

import pytest
import torch
from datasets import Dataset

from agent_helpers import eos_prone
from conftest import train_args
from posttrain import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer
from posttrain.data import DatasetFormatError
from posttrain.data.preference import build_rows
from posttrain.kit.agents import GuessNumberEnv, guess_prompt_rows, multiply, tool_prompt_rows
from posttrain.rollout.backends import DecodeBackend
from posttrain.trainers.agents import AgentRollouts
from posttrain.trainers.logprobs import token_logps

CALL = '<tool_call>{"name": "multiply", "arguments": {"a": 12, "b": 34}}</tool_call>'


def _args(cls, tmp_path, **kw):
    defaults = dict(per_device_train_batch_size=4, num_generations=4, max_completion_length=100, max_steps=2,
                    learning_rate=1e-3, max_tool_calling_iterations=2)
    return train_args(cls, tmp_path, **{**defaults, **kw})


def _force_first_turn(trainer, text):
    """Make the policy's first turn of every rollout ``text`` (then it samples freely)."""
    tok, real = trainer.tokenizer_, trainer.rollout_backend.generate
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]

    def generate(prompt_ids, **kw):
        gens = real(prompt_ids, **kw)
        first = [i for i, p in enumerate(prompt_ids) if tok.decode(p).count("<|im_start|>assistant") == 1]
        for i in first:
            gens.completion_ids[i] = list(ids)
            gens.texts[i] = text
            if gens.logprobs is not None:
                gens.logprobs[i] = [0.0] * len(ids)
        return gens

    trainer.rollout_backend.generate = generate


def test_grpo_with_tools_trains_only_on_sampled_tokens(tiny_model_dir, tmp_path):
    seen = {}

    def reward(prompts, completions, answer, **kw):
        seen.update(completions=completions, answer=answer)
        return [float(len(c)) for c in completions]

    train = Dataset.from_list(tool_prompt_rows(8))
    trainer = GRPOTrainer(tiny_model_dir, reward, args=_args(GRPOConfig, tmp_path), train_dataset=train,
                          tools=[multiply])
    assert "multiply(a, b)" in trainer.tokenizer_.decode(trainer.train_dataset[0]["prompt_input_ids"])
    _force_first_turn(trainer, CALL)
    trainer.model.train()
    rows = [trainer.train_dataset[i] for i in range(4)]
    (batch,) = trainer.generate_and_score(rows, 1)
    tok = trainer.tokenizer_
    for i in range(4):
        ids = batch["input_ids"][i][batch["attention_mask"][i].bool()].tolist()
        cmask = batch["completion_mask"][i][batch["attention_mask"][i].bool()].tolist()
        text = tok.decode(ids)
        assert "<|im_start|>tool\n408<|im_end|>" in text
        tool_turn = tok.decode([t for t, m in zip(ids, cmask) if m == 0])
        assert "<|im_start|>tool\n408<|im_end|>\n<|im_start|>assistant\n" in tool_turn  # never trained on
        assert CALL in tok.decode([t for t, m in zip(ids, cmask) if m == 1])
    sampled = int(batch["completion_mask"].sum())
    assert float(batch["num_items_in_batch"]) == sampled  # the loss is averaged over sampled tokens only
    assert [m["role"] for m in seen["completions"][0]][:2] == ["assistant", "tool"]
    assert seen["completions"][0][0]["tool_calls"][0]["function"]["arguments"] == {"a": 12, "b": 34}
    trainer.train()
    logged = trainer.state.log_history[0]
    assert logged["tools/call_frequency"] >= 1.0 and logged["tools/failure_frequency"] == 0.0
    assert 2.0 <= logged["turns/mean"] <= 3.0 and "turns/truncated_ratio" in logged


def test_token_in_token_out_the_trainer_scores_exactly_what_was_sampled(tiny_model_dir, tokenizer):
    """Multi-turn rollouts of the real sampler (an episodic environment answering every turn): the trainer's log-probs
    of the sampled tokens, on the rows built from the rollouts with the inserted tokens masked, equal the sampler's
    own log-probs (fp32, 1e-4): no token was re-tokenized, dropped or shifted between sampling and training."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    eos_prone(model, tokenizer)
    agent = AgentRollouts(None, lambda: GuessNumberEnv(high=9, max_guesses=4))
    rows = []
    for r in guess_prompt_rows(6, high=9):
        ids = tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, return_dict=True)["input_ids"]
        rows.append({**r, "prompt_input_ids": list(ids)})
    torch.manual_seed(0)
    with torch.no_grad():
        _, gens = agent.rollout(DecodeBackend(lambda: model, tokenizer).generate, rows, tokenizer=tokenizer,
                                config_template_kwargs=None, max_prompt_length=None, max_completion_length=120,
                                max_iterations=3, return_logprobs=True, temperature=1.0, do_sample=True)
    turns = [e.turns for e in agent.last_episodes]
    assert max(turns) >= 3, turns  # several turns, so tokens were inserted between sampled ones
    assert any(0 in m for m in gens.loss_masks)
    batch = build_rows(gens.prompt_ids, gens.completion_ids, pad_token_id=tokenizer.pad_token_id,
                       completion_masks=gens.loss_masks)
    with torch.no_grad():
        logps, mask, _ = token_logps(model, batch, temperature=1.0)
    for i, sampled in enumerate(gens.logprobs):
        assert mask[i].sum() == len(sampled) == sum(gens.loss_masks[i])
        torch.testing.assert_close(logps[i][: len(sampled)], torch.tensor(sampled), atol=1e-4, rtol=1e-4)


class Counter:
    """A tool environment (TRL's kind): its public methods are tools bound to one rollout's instance."""

    def __init__(self):
        self.total = 0

    def reset(self, start=0, **row):
        self.total = int(start)
        return f" (start at {start})"

    def add(self, n: int) -> int:
        """Add to the counter.

        Args:
            n: how much to add
        """
        self.total += int(n)
        return self.total

    def get_reward(self) -> float:
        return float(self.total)


def test_tool_environment_gives_tools_prompts_and_the_reward(tiny_model_dir, tmp_path):
    seen = {}

    def spy(prompts, completions, environments, **kw):
        seen.update(prompts=prompts, environments=environments)
        return [0.0] * len(prompts)

    rows = [{"prompt": [{"role": "user", "content": "count"}], "start": i} for i in range(8)]
    trainer = GRPOTrainer(tiny_model_dir, spy, args=_args(GRPOConfig, tmp_path), train_dataset=Dataset.from_list(rows),
                          environment_factory=Counter)
    assert [f.__name__ for f in trainer.reward_funcs] == ["spy", "Counter"]
    assert trainer.reward_weights.tolist() == [1.0, 1.0]
    _force_first_turn(trainer, '<tool_call>{"name": "add", "arguments": {"n": 5}}</tool_call>')
    trainer.model.train()
    rows = [trainer.train_dataset[i] for i in range(4)]
    trainer.generate_and_score(rows, 1)
    assert [e.total for e in seen["environments"]] == [r["start"] + 5 for r in rows]
    assert seen["prompts"][0][-1]["content"].endswith(f"(start at {rows[0]['start']})")
    rewards = [s["reward"] for s in trainer.completion_samples]
    assert rewards == [float(r["start"] + 5) for r in rows]
    trainer.train()
    assert "rewards/Counter/mean" in trainer.state.log_history[0]


def test_episodic_environment_reward_without_reward_funcs(tiny_model_dir, tmp_path):
    rows = guess_prompt_rows(8, high=8, seed=1)
    trainer = RLOOTrainer(tiny_model_dir, args=_args(RLOOConfig, tmp_path), train_dataset=Dataset.from_list(rows),
                          environment_factory=lambda: GuessNumberEnv(high=8, max_guesses=3))
    secret = rows[0]["secret"]
    _force_first_turn(trainer, str(secret))  # the first guess is right: reward 1
    trainer.model.train()
    batch_rows = [dict(trainer.train_dataset[0]) for _ in range(4)]
    trainer.generate_and_score(batch_rows, 1)
    assert [s["reward"] for s in trainer.completion_samples] == [1.0] * 4
    assert all(e.turns == 1 for e in trainer.agent.last_episodes)
    trainer.train()
    assert "rewards/GuessNumberEnv/mean" in trainer.state.log_history[0]


def test_agent_setups_that_cannot_work_fail_early(tiny_model_dir, tmp_path):
    prompts = Dataset.from_list(tool_prompt_rows(8))
    with pytest.raises(DatasetFormatError, match="conversational prompts"):
        GRPOTrainer(tiny_model_dir, lambda **k: [0.0], args=_args(GRPOConfig, tmp_path),
                    train_dataset=Dataset.from_list([{"prompt": "text"}] * 8), tools=[multiply])
    with pytest.raises(ValueError, match="needs reward_funcs"):  # an environment without a reward: no reward at all
        GRPOTrainer(tiny_model_dir, args=_args(GRPOConfig, tmp_path), train_dataset=prompts,
                    environment_factory=lambda: type("NoReward", (), {"reset": lambda self, **r: None})())
    with pytest.raises(ValueError, match="has no reset"):
        GRPOTrainer(tiny_model_dir, lambda **k: [0.0], args=_args(GRPOConfig, tmp_path), train_dataset=prompts,
                    environment_factory=object)
    with pytest.raises(ValueError, match="docstring"):
        GRPOTrainer(tiny_model_dir, lambda **k: [0.0], args=_args(GRPOConfig, tmp_path), train_dataset=prompts,
                    tools=[lambda x: x])
    assert AgentRollouts([multiply], None).template_kwargs()["tools"][0]["function"]["name"] == "multiply"


def test_rollout_func_replaces_the_rollouts(tiny_model_dir, tmp_path):
    """TRL's escape hatch: the trainer trains on what rollout_func returns; env_mask keeps inserted tokens out of the
    loss; extra keys reach the reward functions; wrong shapes are errors naming the key."""
    seen = {}

    def rollout_func(prompts, trainer):
        tok = trainer.processing_class
        prompt_ids = [tok.apply_chat_template(p, add_generation_prompt=True, return_dict=True)["input_ids"]
                      for p in prompts]
        completion = tok("12 then 34", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        mask = [1] * 2 + [0] * (len(completion) - 4) + [1] * 2
        return {"prompt_ids": prompt_ids, "completion_ids": [completion] * len(prompts), "logprobs": None,
                "env_mask": [mask] * len(prompts), "score": [float(i) for i in range(len(prompts))]}

    def reward(prompts, completions, score, **kw):
        seen["score"] = score
        return score

    trainer = GRPOTrainer(tiny_model_dir, reward, args=_args(GRPOConfig, tmp_path),
                          train_dataset=Dataset.from_list(tool_prompt_rows(8)), rollout_func=rollout_func)
    trainer.model.train()
    (batch,) = trainer.generate_and_score([trainer.train_dataset[i] for i in range(4)], 1)
    assert seen["score"] == [0.0, 1.0, 2.0, 3.0]
    assert int(batch["completion_mask"].sum()) == 4 * 4 == float(batch["num_items_in_batch"])
    trainer.train()
    assert trainer.state.log_history[0]["completions/mean_length"] == 4.0

    def short(prompts, trainer):
        return {"prompt_ids": [[1]], "completion_ids": [[2]], "logprobs": None}

    trainer.rollout_func = short
    with pytest.raises(ValueError, match="returned 1 'prompt_ids' for 4 prompts"):
        trainer.generate_and_score([trainer.train_dataset[i] for i in range(4)], 1)
    with pytest.raises(ValueError, match="rollout_func replaces"):
        GRPOTrainer(tiny_model_dir, reward, args=_args(GRPOConfig, tmp_path), train_dataset=Dataset.from_list(
            tool_prompt_rows(8)), rollout_func=rollout_func, tools=[multiply])


def test_offline_trainers_take_tool_use_data(tiny_model_dir, tmp_path):
    """A `tools` column reaches the chat template (SFT, DPO); tool results are never SFT labels (assistant-only loss,
    and a prompt-completion row whose completion holds a tool message); bad tool calls name the row and column."""
    from posttrain import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer
    from posttrain.kit.agents import MULTIPLY_SCHEMA, tool_use_rows

    rows = tool_use_rows(4, seed=1)
    result = rows[0]["messages"][2]["content"]
    for data, kw in [(rows, dict(assistant_only_loss=True)),
                     ([{"prompt": r["messages"][:1], "completion": r["messages"][1:], "tools": r["tools"]} for r in rows],
                      {})]:
        trainer = SFTTrainer(tiny_model_dir, args=train_args(SFTConfig, tmp_path, max_steps=1, **kw),
                             train_dataset=Dataset.from_list(data))
        tok, row = trainer.processing_class, trainer.train_dataset[0]
        assert "<tools>\nmultiply(a, b)\n</tools>" in tok.decode(row["input_ids"])
        trained = tok.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label != -100])
        assert "<tool_call>" in trained and trained.endswith(f"{result}<|im_end|>")
        assert f"tool\n{result}" not in trained and "<|im_start|>" not in trained  # the tool turn is context only

    def call(args):
        return {"role": "assistant", "content": "",
                "tool_calls": [{"type": "function", "function": {"name": "multiply", "arguments": args}}]}

    pairs = [{"prompt": [{"role": "user", "content": "2*3?"}], "chosen": [call({"a": 2, "b": 3})],
              "rejected": [call({"a": 2, "b": 4})], "tools": json.dumps([MULTIPLY_SCHEMA])}] * 4
    trainer = DPOTrainer(tiny_model_dir, args=train_args(DPOConfig, tmp_path, max_steps=1),
                         train_dataset=Dataset.from_list(pairs))
    assert "multiply(a, b)" in trainer.processing_class.decode(trainer.train_dataset[0]["prompt_ids"])
    bad = [{**pairs[0], "chosen": [{"role": "assistant", "content": "", "tool_calls": [{"function": {"arguments": {}}}]}]}]
    with pytest.raises(DatasetFormatError, match=r"Row 0 \(0-based\), column 'chosen', message 0, tool call 0"):
        DPOTrainer(tiny_model_dir, args=train_args(DPOConfig, tmp_path, max_steps=1), train_dataset=Dataset.from_list(bad * 2))
    with pytest.raises(DatasetFormatError, match=r"column 'tools': not valid JSON"):
        DPOTrainer(tiny_model_dir, args=train_args(DPOConfig, tmp_path, max_steps=1),
                   train_dataset=Dataset.from_list([{**pairs[0], "tools": "[{"}] * 2))


def test_a_dict_of_environments_each_row_names_its_own(tiny_model_dir, tmp_path):
    """TRL's multi-environment form: {name: factory}; a row's `environment` column picks its environment, its prompt
    shows only that environment's tools, and each environment class's reward scores only its own rollouts."""
    rows = [{"prompt": [{"role": "user", "content": "count"}], "environment": "counter", "start": 1, "secret": None},
            {"prompt": [{"role": "user", "content": "guess"}], "environment": "guess", "start": None, "secret": 3}] * 4
    factories = {"counter": Counter, "guess": lambda: GuessNumberEnv(8, 3)}
    trainer = GRPOTrainer(tiny_model_dir, args=_args(GRPOConfig, tmp_path, num_generations=2),
                          train_dataset=Dataset.from_list(rows), environment_factory=factories)
    tok = trainer.tokenizer_
    assert "add(n)" in tok.decode(trainer.train_dataset[0]["prompt_input_ids"])
    assert "<tools>" not in tok.decode(trainer.train_dataset[1]["prompt_input_ids"])
    assert [f.__name__ for f in trainer.reward_funcs] == ["Counter", "GuessNumberEnv"]
    _force_first_turn(trainer, '<tool_call>{"name": "add", "arguments": {"n": 2}}</tool_call>')
    trainer.model.train()
    trainer.generate_and_score([trainer.train_dataset[i] for i in (0, 0, 1, 1)], 1)
    envs = trainer.agent.batch_environments
    assert [type(e).__name__ for e in envs] == ["Counter", "Counter", "GuessNumberEnv", "GuessNumberEnv"]
    assert [e.total for e in envs[:2]] == [3, 3] and all(e.guesses == 1 for e in envs[2:])
    assert [s["reward"] for s in trainer.completion_samples][:2] == [3.0, 3.0]
    trainer.train()
    with pytest.raises(ValueError, match=r"Row 0 \(0-based\), column 'environment': 'nope' is not one of"):
        GRPOTrainer(tiny_model_dir, args=_args(GRPOConfig, tmp_path, num_generations=2),
                    train_dataset=Dataset.from_list([{**rows[0], "environment": "nope"}] * 4),
                    environment_factory=factories)
