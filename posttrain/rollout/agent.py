"""Multi-turn rollouts: the policy calls tools or talks to an environment over several assistant turns.

A rollout is kept as tokens, never as re-tokenized text (token-in/token-out): the completion of a prompt is the
exact sequence of sampled turns and the tokens inserted between them (tool results, an environment's observation,
the next generation prompt), with a 0/1 ``loss_mask`` that is 1 on sampled tokens only. Every later turn is
generated from ``prompt_ids + completion_ids`` as they stand, so what the trainer scores is what was sampled.

* :class:`ToolBox` — the tools a rollout may call by name: runs a call (sync or ``async``, with a timeout); an
  exception, a timeout, an unknown tool or a malformed call becomes an ``{"error": ...}`` tool message the model
  sees, never a crash.
* :class:`Episode` — one rollout's state: its tokens and masks, the messages of its turns (what reward functions
  receive as the completion), and counts (turns, tool calls, failed calls, truncation).
* :func:`multi_turn_rollout` — runs every episode of a batch together: all active episodes' next turn is generated in
  one call of the rollout backend; after each turn that ended with EOS a ``respond`` callback says what follows it
  (tool results, an observation) or that the episode is over. A turn that hits the token budget ends the episode as
  truncated; so does an inserted message that would pass it (the message is then not inserted).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..data.tools import HermesToolCallParser, ParsedTurn, ToolCall, TurnRenderer, tool_message


_EXECUTORS: dict[str, Any] = {}
_EXECUTORS_LOCK = threading.Lock()


def _event_loop() -> asyncio.AbstractEventLoop:
    """The one event loop that runs ``async`` tools, in a daemon thread started at the first use."""
    with _EXECUTORS_LOCK:
        if "loop" not in _EXECUTORS:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="posttrain-tools", daemon=True).start()
            _EXECUTORS["loop"] = loop
        return _EXECUTORS["loop"]


def _threads() -> concurrent.futures.ThreadPoolExecutor:
    """The threads that run synchronous tools under a timeout."""
    with _EXECUTORS_LOCK:
        if "pool" not in _EXECUTORS:
            _EXECUTORS["pool"] = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="posttrain-tool")
        return _EXECUTORS["pool"]


class ToolBox:
    """Tools callable by name. ``timeout`` (seconds, None: none) bounds each call; ``async`` tools run on one event
    loop kept in a daemon thread, synchronous ones under a timeout in a small thread pool (a call that overruns is
    reported to the model; Python cannot stop its thread, which finishes in the background)."""

    def __init__(self, tools: Sequence[Callable] = (), timeout: float | None = 60.0):
        self.tools = {getattr(t, "__name__", str(t)): t for t in tools}
        self.timeout = timeout

    def call(self, call: ToolCall) -> tuple[dict[str, Any], bool]:
        """``(tool message, ok)`` for one parsed call."""
        if call.error:
            return tool_message(call.name or "unknown", {"error": call.error}), False
        fn = self.tools.get(call.name)
        if fn is None:
            return tool_message(call.name, {"error": f"unknown tool {call.name!r}; available: {sorted(self.tools)}"}), False
        future = None
        try:
            if inspect.iscoroutinefunction(fn):
                future = asyncio.run_coroutine_threadsafe(fn(**call.arguments), _event_loop())
            elif self.timeout is not None:
                future = _threads().submit(fn, **call.arguments)
            else:
                return tool_message(call.name, fn(**call.arguments)), True
            return tool_message(call.name, future.result(timeout=self.timeout)), True
        except (TimeoutError, concurrent.futures.TimeoutError):
            future.cancel()
            return tool_message(call.name, {"error": f"the call timed out after {self.timeout} s"}), False
        except Exception as err:  # a tool's failure is the model's to see, not the run's to die of
            return tool_message(call.name, {"error": f"{type(err).__name__}: {err}"}), False


@dataclass
class Episode:
    """One rollout: ``completion_ids`` (sampled and inserted tokens), ``loss_mask`` (1 on sampled tokens),
    ``logprobs`` (the sampler's, 0 on inserted tokens; with ``return_logprobs``), ``messages`` (the assistant turns
    and inserted messages, the completion as reward functions see it), and counts."""

    completion_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    turns: int = 0
    tool_calls: int = 0
    tool_failures: int = 0
    truncated: bool = False

    def add(self, ids: Sequence[int], sampled: bool, logprobs: Sequence[float] | None = None) -> None:
        self.completion_ids.extend(ids)
        self.loss_mask.extend([int(sampled)] * len(ids))
        self.logprobs.extend(logprobs if logprobs is not None else [0.0] * len(ids))

    @property
    def text(self) -> str:
        """The assistant turns' text, joined (a plain-text view of the completion)."""
        return "\n".join(m.get("content") or "" for m in self.messages if m.get("role") == "assistant")


Respond = Callable[[int, ParsedTurn, Episode], "list[dict[str, Any]] | None"]
"""``respond(i, turn, episode)``: the messages that follow episode ``i``'s latest turn (tool results, an observation),
or None (or []) when the episode is over. It may update the episode's counts."""


def assistant_message(turn: ParsedTurn) -> dict[str, Any]:
    """A parsed turn as an assistant message (with ``tool_calls`` when it made any readable ones)."""
    message: dict[str, Any] = {"role": "assistant", "content": turn.content}
    calls = [c.as_message_call() for c in turn.tool_calls if not c.error]
    if calls:
        message["tool_calls"] = calls
    return message


def multi_turn_rollout(generate: Callable[..., Any], prompt_ids: Sequence[Sequence[int]], respond: Respond, *,
                       tokenizer, renderer: TurnRenderer | Sequence[TurnRenderer], max_completion_length: int,
                       max_turns: int | None = None,
                       parser: Callable[[str], ParsedTurn] | None = None, return_logprobs: bool = False,
                       **sampling) -> list[Episode]:
    """Run one episode per prompt (see the module docstring). ``generate(prompt_ids, max_new_tokens=...,
    return_logprobs=..., **sampling)`` is a rollout backend's :meth:`generate`; ``renderer`` makes the inserted tokens
    (one for all episodes, or one each: rows whose templates render other tools); ``max_turns`` bounds the assistant
    turns of an episode (None: the token budget alone)."""
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    parser = parser or HermesToolCallParser()
    eos = tokenizer.eos_token_id
    episodes = [Episode() for _ in prompt_ids]
    active = list(range(len(prompt_ids)))
    while active:
        budgets = [max_completion_length - len(episodes[i].completion_ids) for i in active]
        gens = generate([list(prompt_ids[i]) + episodes[i].completion_ids for i in active],
                        max_new_tokens=max(budgets), return_logprobs=return_logprobs, **sampling)
        still = []
        for k, i in enumerate(active):
            ep, ids = episodes[i], list(gens.completion_ids[k])[: budgets[k]]
            lps = list(gens.logprobs[k])[: len(ids)] if return_logprobs and gens.logprobs is not None else None
            ep.add(ids, sampled=True, logprobs=lps)
            ep.turns += 1
            ended = bool(ids) and ids[-1] == eos
            turn = parser(tokenizer.decode(ids, skip_special_tokens=True))
            ep.messages.append(assistant_message(turn))
            if not ended:  # the budget ran out mid-turn
                ep.truncated = True
                continue
            follow = respond(i, turn, ep) if max_turns is None or ep.turns < max_turns else None
            if not follow:
                continue
            inserted = (renderer if isinstance(renderer, TurnRenderer) else renderer[i]).insert_ids(follow, turn.tool_calls)
            if len(ep.completion_ids) + len(inserted) >= max_completion_length:
                ep.truncated = True  # no room for the messages and a reply: stop before them
                continue
            ep.add(inserted, sampled=False)
            ep.messages.extend(follow)
            still.append(i)
        active = still
    return episodes


def tool_responder(toolboxes: Sequence[ToolBox]) -> Respond:
    """``respond`` for tool calling: the turn's tool calls run in episode ``i``'s toolbox; no call ends the
    episode."""

    def respond(i: int, turn: ParsedTurn, episode: Episode):
        if not turn.tool_calls:
            return None
        out = []
        for call in turn.tool_calls:
            message, ok = toolboxes[i].call(call)
            episode.tool_calls += 1
            episode.tool_failures += int(not ok)
            out.append(message)
        return out

    return respond


def observation_text(observation: Any) -> str:
    """An environment's observation as message text (a string as is, a mapping/list as JSON)."""
    if isinstance(observation, str):
        return observation
    try:
        return json.dumps(observation)
    except (TypeError, ValueError):
        return str(observation)


def step_result(result: Any) -> tuple[Any, float | None, bool]:
    """``(observation, reward, done)`` of an environment's ``step``: a tuple ``(obs, reward, done[, ...])`` or an
    object/mapping with those fields (OpenEnv's ``StepResult``)."""
    if isinstance(result, tuple):
        if len(result) < 3:
            raise ValueError(f"An environment's step() must return (observation, reward, done), got {result!r}.")
        return result[0], result[1], bool(result[2])
    get = result.get if isinstance(result, Mapping) else lambda k, d=None: getattr(result, k, d)
    return get("observation"), get("reward"), bool(get("done", False))


__all__ = ["ToolBox", "Episode", "multi_turn_rollout", "tool_responder", "assistant_message", "observation_text",
           "step_result"]
