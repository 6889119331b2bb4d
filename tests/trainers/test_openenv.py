"""Environments served by a real OpenEnv server process (openenv-core, started on 127.0.0.1 by the test and stopped
by it): posttrain's client speaks its session protocol, and GRPO trains against it through environment_factory."""

import pytest
from datasets import Dataset

from conftest import train_args
from agent_helpers import openenv_server
from posttrain import GRPOConfig, GRPOTrainer
from posttrain.kit.agents import guess_prompt_rows
from posttrain.rollout.openenv import OpenEnvClient, OpenEnvEnvironment, OpenEnvError


@pytest.fixture(scope="module")
def server_url():
    with openenv_server(high=8, max_guesses=3) as url:
        yield url


def test_openenv_sessions_play_independent_episodes(server_url):
    a, b = OpenEnvEnvironment(server_url), OpenEnvEnvironment(server_url)
    assert a.reset(secret=5, prompt=[{"role": "user", "content": "hi"}]) is None  # no first observation
    assert b.reset(secret=2) is None
    assert a.step("3") == ("higher", 0.0, False)
    assert b.step("my guess is 2") == ("correct", 1.0, True)
    assert a.step("6") == ("lower", 0.0, False)
    assert a.step("7") == ("out of guesses", 0.0, True)
    a.close(), b.close()


def test_openenv_errors_are_clear(server_url):
    client = OpenEnvClient(server_url)
    client.reset()
    with pytest.raises(OpenEnvError, match="OpenEnv server error on 'step'"):
        client.step({"not_a_field": 1})
    client.close()
    with pytest.raises(OpenEnvError, match="Cannot reach the OpenEnv server"):
        OpenEnvClient("http://127.0.0.1:9", timeout=2).reset()


def test_grpo_trains_against_an_openenv_server(server_url, tiny_model_dir, tmp_path):
    rows = guess_prompt_rows(8, high=8, seed=2)
    args = train_args(GRPOConfig, tmp_path, per_device_train_batch_size=4, num_generations=4, max_steps=2,
                      max_completion_length=24, max_tool_calling_iterations=2)
    trainer = GRPOTrainer(tiny_model_dir, args=args, train_dataset=Dataset.from_list(rows),
                          environment_factory=lambda: OpenEnvEnvironment(server_url))
    trainer.train()
    logged = trainer.state.log_history[0]
    assert "rewards/OpenEnvEnvironment/mean" in logged and "turns/mean" in logged
    assert len(trainer.agent.pool) == 4  # one session a rollout, reused across batches
    for env in trainer.agent.pool:
        env.close()
