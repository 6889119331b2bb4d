"""Tools and environments of the online trainers (GRPO, RLOO): what turns a generation batch into multi-turn rollouts.

:class:`AgentRollouts` is built by :class:`~posttrain.trainers.online_base.OnlineTrainer` from its ``tools`` and
``environment_factory`` arguments (docs/agents.md):

* ``tools``: callables (sync or ``async``) with type hints and a Google-style docstring; their JSON schemas are given
  to the chat template with every prompt; the calls the model writes (Hermes/Qwen ``<tool_call>`` format, or
  ``tool_call_parser``) run after its turn and their results are inserted as ``tool`` messages.
* ``environment_factory``: a callable returning a fresh environment; one instance per rollout, kept in a pool and
  reset for each. Two kinds, told apart by a ``step`` method:

  - a *tool environment* (TRL's): its public methods (not ``reset``/``get_reward``, not ``_private``) are tools
    bound to that rollout's instance; ``reset(**row)`` may return text appended to the prompt's last message;
    ``get_reward()``, if defined, is the rollout's reward;
  - an *episodic environment* (gym-style, OpenEnv's): ``reset(**row)`` gives the first observation (appended to the
    prompt's last message, None for none), each assistant turn's text is the action of ``step(action)``, which
    returns ``(observation, reward, done)`` (a tuple, or an object/mapping with those fields); the observation
    follows as a ``user`` message until ``done``; the rollout's reward is ``get_reward()`` if defined, else the sum
    of its steps' rewards.

  An environment that gives a reward is one more reward source, named after its class, with weight 1 (or the last
  of ``reward_weights`` when it has one more entry than ``reward_funcs``); ``reward_funcs`` may then be omitted.
  Reward functions also receive ``environments`` (each completion's instance).

The rollouts themselves run in :func:`posttrain.rollout.agent.multi_turn_rollout`: token-in/token-out, the inserted
tokens masked out of the loss, the log-prob ratios and the KL.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..data.formats import is_conversational_value
from ..data.tokenize import chat_template_ids, row_template_kwargs, truncate
from ..data.tools import HermesToolCallParser, TurnRenderer, tool_schemas
from ..rollout.agent import ToolBox, multi_turn_rollout, observation_text, step_result, tool_responder
from ..rollout.generation import Generations

_RESERVED = ("reset", "get_reward", "step", "close")


def environment_tools(env) -> list[Callable]:
    """The public methods of a tool environment: the tools bound to its instance."""
    return [m for name, m in inspect.getmembers(env, predicate=inspect.ismethod)
            if not name.startswith("_") and name not in _RESERVED]


class AgentRollouts:
    """The tools and environments of one online trainer (see the module docstring)."""

    def __init__(self, tools: Sequence[Callable] | None, environment_factory: Callable[[], Any] | None, *,
                 tool_call_parser: Callable | None = None, tool_timeout: float | None = 60.0):
        self.tools = list(tools or [])
        for tool in self.tools:
            if not callable(tool):
                raise TypeError(f"tools: every tool must be a callable, got {type(tool).__name__} ({tool!r}).")
        self.factory = environment_factory
        self.parser = tool_call_parser or HermesToolCallParser()
        self.timeout = tool_timeout
        self.pool: list[Any] = []
        self.episodic = False
        self.env_name: str | None = None
        self.env_has_reward = False
        env_tools: list[Callable] = []
        if environment_factory is not None:
            if not callable(environment_factory):
                raise TypeError("environment_factory must be a callable that returns a new environment (e.g. the "
                                f"environment's class), got {type(environment_factory).__name__}.")
            probe = environment_factory()
            if not callable(getattr(probe, "reset", None)):
                raise ValueError(f"The environment {type(probe).__name__} has no reset() method; every environment "
                                 "needs one (it may return None).")
            self.pool.append(probe)
            self.env_name = type(probe).__name__
            self.episodic = callable(getattr(probe, "step", None))
            self.env_has_reward = self.episodic or callable(getattr(probe, "get_reward", None))
            env_tools = [] if self.episodic else environment_tools(probe)
        self.schemas = tool_schemas(self.tools + env_tools)
        self._renderers: dict[int, TurnRenderer] = {}
        self._rewards: list[float | None] = []
        self._environments: list[Any] = []

    @property
    def template_kwargs(self) -> dict[str, Any]:
        """What the chat template is rendered with besides the config's: the tools' schemas."""
        return {"tools": self.schemas} if self.schemas else {}

    # -- environments ----------------------------------------------------------------------------------
    def environments(self, n: int) -> list[Any]:
        """``n`` environment instances for a batch's rollouts (the pool grows when a batch needs more)."""
        while len(self.pool) < n:
            self.pool.append(self.factory())
        return self.pool[:n]

    def reward_function(self) -> Callable:
        """The environment's reward as a reward function (named after its class) of the latest batch's rollouts."""

        def environment_reward(prompts, completions, **kwargs):
            return list(self._rewards)

        environment_reward.__name__ = self.env_name
        return environment_reward

    @property
    def batch_environments(self) -> list[Any]:
        """The environment instances of the latest batch's rollouts (reward functions get them as
        ``environments``)."""
        return list(self._environments)

    # -- rollouts --------------------------------------------------------------------------------------
    def _renderer(self, tokenizer, template_kwargs: Mapping[str, Any]) -> TurnRenderer:
        key = hash(repr(sorted(template_kwargs.items(), key=lambda kv: kv[0])))
        if key not in self._renderers:
            self._renderers[key] = TurnRenderer(tokenizer, template_kwargs)
        return self._renderers[key]

    def rollout(self, generate: Callable[..., Generations], rows: Sequence[Mapping[str, Any]], *, tokenizer,
                config_template_kwargs: Mapping[str, Any] | None, max_prompt_length: int | None,
                max_completion_length: int, max_iterations: int | None, return_logprobs: bool,
                **sampling) -> tuple[list, Generations]:
        """Multi-turn rollouts of ``rows`` (one each): ``(prompts, generations)``, the prompts as the rollouts saw
        them (with a reset's observation) and :class:`~posttrain.rollout.Generations` carrying the loss masks, the
        messages and the truncation of each."""
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
        n = len(rows)
        prompts, prompt_ids = [r["prompt"] for r in rows], [list(r["prompt_input_ids"]) for r in rows]
        envs = self.environments(n) if self.factory is not None else [None] * n
        self._environments = [e for e in envs if e is not None]
        kwargs = {**dict(config_template_kwargs or {}), **self.template_kwargs}
        if self.factory is not None:
            for i, (env, row) in enumerate(zip(envs, rows)):
                observation = env.reset(**{k: v for k, v in row.items() if k != "prompt_input_ids"})
                if observation is None:
                    continue
                prompt = prompts[i]
                if not is_conversational_value(prompt):
                    raise ValueError("Environments need conversational prompts (lists of messages): the observation of "
                                     "reset() is appended to the last message.")
                last = prompt[-1]
                prompts[i] = list(prompt[:-1]) + [{**last, "content": (last.get("content") or "") +
                                                   observation_text(observation)}]
                ids = chat_template_ids(tokenizer, prompts[i], add_generation_prompt=True,
                                        **row_template_kwargs(row, kwargs))
                prompt_ids[i] = truncate(ids, max_prompt_length, "keep_end") if max_prompt_length else ids
        toolboxes = [ToolBox(self.tools + (environment_tools(e) if e is not None and not self.episodic else []),
                             self.timeout) for e in envs]
        step_rewards: list[float] = [0.0] * n
        if self.episodic:
            def respond(i, turn, episode):
                observation, reward, done = step_result(envs[i].step(turn.text))
                step_rewards[i] += float(reward or 0.0)
                if done:
                    return None
                return [{"role": "user", "content": observation_text(observation)}]
        else:
            respond = tool_responder(toolboxes)
        renderer = self._renderer(tokenizer, kwargs)
        episodes = multi_turn_rollout(
            generate, prompt_ids, respond, tokenizer=tokenizer, renderer=renderer,
            max_completion_length=max_completion_length,
            max_turns=None if max_iterations is None else max_iterations + 1, parser=self.parser,
            return_logprobs=return_logprobs, **sampling)
        if self.env_has_reward:
            self._rewards = [float(e.get_reward()) if callable(getattr(e, "get_reward", None)) else step_rewards[i]
                             for i, e in enumerate(envs)]
        self.last_episodes = episodes
        gens = Generations(
            prompt_ids=prompt_ids, completion_ids=[e.completion_ids for e in episodes], texts=[e.text for e in episodes],
            logprobs=[[lp for lp, m in zip(e.logprobs, e.loss_mask) if m] for e in episodes] if return_logprobs else None,
            loss_masks=[e.loss_mask for e in episodes], messages=[e.messages for e in episodes],
            truncated=[e.truncated for e in episodes])
        return prompts, gens


__all__ = ["AgentRollouts", "environment_tools"]
