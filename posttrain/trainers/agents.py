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
from dataclasses import dataclass, field
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


@dataclass
class EnvironmentKind:
    """One environment of ``environment_factory`` (the one, or one entry of a dict): its factory, its pool of
    instances, whether it is episodic and gives a reward, and the schemas of the tools a rollout with it may call."""

    name: str | None
    factory: Callable[[], Any]
    cls: type
    episodic: bool
    has_reward: bool
    schemas: list[dict[str, Any]]
    pool: list[Any] = field(default_factory=list)


class AgentRollouts:
    """The tools and environments of one online trainer (see the module docstring)."""

    def __init__(self, tools: Sequence[Callable] | None, environment_factory, *,
                 tool_call_parser: Callable | None = None, tool_timeout: float | None = 60.0):
        self.tools = list(tools or [])
        for tool in self.tools:
            if not callable(tool):
                raise TypeError(f"tools: every tool must be a callable, got {type(tool).__name__} ({tool!r}).")
        self.parser = tool_call_parser or HermesToolCallParser()
        self.timeout = tool_timeout
        self.multi = isinstance(environment_factory, Mapping)
        factories = dict(environment_factory) if self.multi else \
            ({} if environment_factory is None else {None: environment_factory})
        if self.multi and not factories:
            raise ValueError("environment_factory is an empty dict; give {name: factory} for each environment.")
        self.kinds: dict[str | None, EnvironmentKind] = {name: self._probe(name, f) for name, f in factories.items()}
        self._base_schemas = tool_schemas(self.tools)
        self._renderers: dict[str, TurnRenderer] = {}
        self._rewards: list[float | None] = []
        self._environments: list[Any] = []
        self.last_episodes: list = []

    def _probe(self, name, factory) -> EnvironmentKind:
        where = f"environment_factory[{name!r}]" if name is not None else "environment_factory"
        if not callable(factory):
            raise TypeError(f"{where} must be a callable that returns a new environment (e.g. the environment's "
                            f"class), got {type(factory).__name__}.")
        probe = factory()
        if not callable(getattr(probe, "reset", None)):
            raise ValueError(f"The environment {type(probe).__name__} ({where}) has no reset() method; every "
                             "environment needs one (it may return None).")
        episodic = callable(getattr(probe, "step", None))
        kind = EnvironmentKind(name, factory, type(probe), episodic,
                               episodic or callable(getattr(probe, "get_reward", None)),
                               tool_schemas(self.tools + ([] if episodic else environment_tools(probe))))
        kind.pool.append(probe)
        return kind

    # -- what the trainer asks --------------------------------------------------------------------------
    @property
    def env_has_reward(self) -> bool:
        return any(k.has_reward for k in self.kinds.values())

    @property
    def has_tools(self) -> bool:
        return bool(self._base_schemas) or any(k.schemas for k in self.kinds.values())

    @property
    def pool(self) -> list[Any]:
        """Every environment instance made so far."""
        return [e for k in self.kinds.values() for e in k.pool]

    def kind_of(self, row: Mapping[str, Any], index: int | None = None) -> EnvironmentKind | None:
        """The environment of a row: the one, or (a dict of factories) the one its ``environment`` column names."""
        if not self.kinds:
            return None
        if not self.multi:
            return self.kinds[None]
        name = row.get("environment")
        if name not in self.kinds:
            where = f"Row {index} (0-based), column 'environment'" if index is not None else "Column 'environment'"
            raise ValueError(f"{where}: {name!r} is not one of the environments given to environment_factory "
                             f"({sorted(self.kinds)}); with a dict of environments every row names its own.")
        return self.kinds[name]

    def template_kwargs(self, row: Mapping[str, Any] | None = None, index: int | None = None) -> dict[str, Any]:
        """What a row's chat template is rendered with besides the config's: the schemas of the tools its rollout
        may call (the trainer's, and its environment's methods)."""
        kind = None if self.multi and row is None else self.kind_of(row or {}, index)
        schemas = kind.schemas if kind is not None else self._base_schemas
        return {"tools": schemas} if schemas else {}

    def reward_functions(self) -> list[Callable]:
        """One reward function per environment class that gives a reward (named after the class): the rewards of
        the latest batch's rollouts with that class, None for the others (so they count as missing)."""
        out, seen = [], set()
        for kind in self.kinds.values():
            if not kind.has_reward or kind.cls in seen:
                continue
            seen.add(kind.cls)

            def environment_reward(prompts, completions, _cls=kind.cls, **kwargs):
                return [r if type(e) is _cls else None for r, e in zip(self._rewards, self._environments)]

            environment_reward.__name__ = kind.cls.__name__
            out.append(environment_reward)
        return out

    @property
    def batch_environments(self) -> list[Any]:
        """The environment instances of the latest batch's rollouts (reward functions get them as
        ``environments``)."""
        return list(self._environments)

    def environments(self, kinds: Sequence[EnvironmentKind]) -> list[Any]:
        """One instance per rollout of the given kinds, from their pools (a pool grows when a batch needs more)."""
        used: dict[int, int] = {}
        out = []
        for kind in kinds:
            k = used.get(id(kind), 0)
            if k == len(kind.pool):
                kind.pool.append(kind.factory())
            used[id(kind)] = k + 1
            out.append(kind.pool[k])
        return out

    # -- rollouts --------------------------------------------------------------------------------------
    def _renderer(self, tokenizer, template_kwargs: Mapping[str, Any]) -> TurnRenderer:
        key = repr(sorted(template_kwargs.items(), key=lambda kv: kv[0]))
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
        kinds = [self.kind_of(r) for r in rows]
        envs = self.environments(kinds) if self.kinds else [None] * n
        self._environments = [e for e in envs if e is not None]
        kwargs = [{**dict(config_template_kwargs or {}), **self.template_kwargs(r)} for r in rows]
        for i, (env, row) in enumerate(zip(envs, rows)):
            if env is None:
                continue
            reset = {k: v for k, v in row.items() if k != "prompt_input_ids" and not (self.multi and k == "environment")}
            observation = env.reset(**reset)
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
                                    **row_template_kwargs(row, kwargs[i]))
            prompt_ids[i] = truncate(ids, max_prompt_length, "keep_end") if max_prompt_length else ids
        toolboxes = [ToolBox(self.tools + (environment_tools(e) if e is not None and not k.episodic else []),
                             self.timeout) for e, k in zip(envs, kinds)]
        step_rewards: list[float] = [0.0] * n
        call_tools = tool_responder(toolboxes)

        def respond(i, turn, episode):
            if kinds[i] is None or not kinds[i].episodic:
                return call_tools(i, turn, episode)
            observation, reward, done = step_result(envs[i].step(turn.text))
            step_rewards[i] += float(reward or 0.0)
            return None if done else [{"role": "user", "content": observation_text(observation)}]

        episodes = multi_turn_rollout(
            generate, prompt_ids, respond, tokenizer=tokenizer,
            renderer=[self._renderer(tokenizer, kw) for kw in kwargs], max_completion_length=max_completion_length,
            max_turns=None if max_iterations is None else max_iterations + 1, parser=self.parser,
            return_logprobs=return_logprobs, **sampling)
        self._rewards = [None if not k.has_reward else
                         float(e.get_reward()) if callable(getattr(e, "get_reward", None)) else step_rewards[i]
                         for i, (e, k) in enumerate(zip(envs, kinds)) if e is not None]
        self.last_episodes = episodes
        gens = Generations(
            prompt_ids=prompt_ids, completion_ids=[e.completion_ids for e in episodes], texts=[e.text for e in episodes],
            logprobs=[[lp for lp, m in zip(e.logprobs, e.loss_mask) if m] for e in episodes] if return_logprobs else None,
            loss_masks=[e.loss_mask for e in episodes], messages=[e.messages for e in episodes],
            truncated=[e.truncated for e in episodes])
        return prompts, gens


__all__ = ["AgentRollouts", "environment_tools"]
