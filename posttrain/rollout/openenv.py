"""Environments served by an OpenEnv server, as episodic environments of the online trainers (docs/agents.md).

OpenEnv (the ``openenv-core`` package) serves an environment over a WebSocket session protocol: a client connects
to ``ws://HOST:PORT/ws``, sends ``{"type": "reset", "data": {...}}`` and ``{"type": "step", "data": <action>}``, and
gets ``{"type": "observation", "data": {"observation": {...}, "reward": r, "done": d}}`` back (``{"type":
"error", ...}`` on failure); each session has its own environment instance on the server. :class:`OpenEnvClient`
speaks that protocol (with the small ``websockets`` package: the server's own dependencies need not be installed
beside the trainer), and :class:`OpenEnvEnvironment` makes one session an episodic environment for
``environment_factory``::

    trainer = GRPOTrainer(model, args=args, train_dataset=prompts,
                          environment_factory=lambda: OpenEnvEnvironment("http://127.0.0.1:8765"))

The model's turn becomes the action (``action=``, default ``{"message": text}``), the observation becomes the next
user message (``observation=``, default: its one text field, else its JSON), and the reward and end of the episode
are the server's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from .agent import observation_text as any_observation_text

TEXT_FIELDS = ("text", "message", "feedback", "content", "response", "observation", "prompt")


class OpenEnvError(RuntimeError):
    """The OpenEnv server answered with an error (or not at all)."""


def _ws_url(base_url: str) -> str:
    url = base_url.rstrip("/")
    for scheme, ws in (("https://", "wss://"), ("http://", "ws://")):
        if url.startswith(scheme):
            url = ws + url[len(scheme):]
    if not url.startswith(("ws://", "wss://")):
        url = "ws://" + url
    return url if url.endswith("/ws") else url + "/ws"


class OpenEnvClient:
    """One session with an OpenEnv server (its WebSocket protocol). Connects at the first call; ``timeout``
    (seconds) bounds each exchange."""

    def __init__(self, base_url: str, timeout: float = 60.0):
        self.url = _ws_url(base_url)
        self.timeout = timeout
        self._ws = None

    def _connect(self):
        if self._ws is None:
            try:
                from websockets.sync.client import connect
            except ImportError as err:
                raise ImportError("OpenEnv environments need the 'websockets' package: pip install "
                                  "'posttrain[openenv]'.") from err
            try:
                self._ws = connect(self.url, open_timeout=self.timeout, max_size=None)
            except OSError as err:
                raise OpenEnvError(f"Cannot reach the OpenEnv server at {self.url}: {err}. Is it running?") from err
        return self._ws

    def _exchange(self, message: dict[str, Any]) -> dict[str, Any]:
        ws = self._connect()
        ws.send(json.dumps(message))
        try:
            reply = json.loads(ws.recv(timeout=self.timeout))
        except TimeoutError as err:
            raise OpenEnvError(f"The OpenEnv server at {self.url} did not answer a {message['type']!r} within "
                               f"{self.timeout} s.") from err
        if reply.get("type") == "error":
            data = reply.get("data") or {}
            raise OpenEnvError(f"OpenEnv server error on {message['type']!r} ({data.get('code', '?')}): "
                               f"{data.get('message', data)}")
        return reply.get("data") or {}

    def reset(self, **data: Any) -> dict[str, Any]:
        """``{"observation": ..., "reward": ..., "done": ...}`` of a new episode (``data``: reset parameters)."""
        return self._exchange({"type": "reset", "data": data})

    def step(self, action: Mapping[str, Any]) -> dict[str, Any]:
        return self._exchange({"type": "step", "data": dict(action)})

    def close(self) -> None:
        if self._ws is not None:  # the server ends the session when the connection closes
            self._ws.close()
            self._ws = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def observation_text(observation: Any) -> str:
    """An OpenEnv observation as message text: a string as is; a mapping's first text field of
    :data:`TEXT_FIELDS` (or its only string field); else its JSON."""
    if isinstance(observation, str):
        return observation
    if isinstance(observation, Mapping):
        for key in TEXT_FIELDS:
            if isinstance(observation.get(key), str):
                return observation[key]
        strings = [v for v in observation.values() if isinstance(v, str)]
        if len(strings) == 1:
            return strings[0]
    return any_observation_text(observation)


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


class OpenEnvEnvironment:
    """An episodic environment (``reset``/``step``) backed by one OpenEnv session.

    ``action(text)`` turns the model's turn into the server's action (default ``{"message": text}``);
    ``observation(obs)`` turns an observation into the next message's text (default :func:`observation_text`);
    ``reset_data(row)`` gives the reset parameters from the dataset row (default: the row's JSON-serialisable columns
    but the prompt; the server keeps those its environment's ``reset`` takes)."""

    def __init__(self, base_url: str, *, action: Callable[[str], Mapping[str, Any]] | None = None,
                 observation: Callable[[Any], str] | None = None,
                 reset_data: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None, timeout: float = 60.0):
        self.client = OpenEnvClient(base_url, timeout)
        self.action = action or (lambda text: {"message": text})
        self.observation = observation or observation_text
        self.reset_data = reset_data or (lambda row: {k: v for k, v in row.items()
                                                      if k != "prompt" and _jsonable(v)})
        self.total_reward = 0.0

    def reset(self, **row: Any) -> str | None:
        """Starts an episode; the first observation's text (None when empty) is appended to the prompt."""
        self.total_reward = 0.0
        result = self.client.reset(**self.reset_data(row))
        text = self.observation(result.get("observation"))
        return text or None

    def step(self, action: str) -> tuple[str, float, bool]:
        result = self.client.step(self.action(action))
        reward = float(result.get("reward") or 0.0)
        self.total_reward += reward
        return self.observation(result.get("observation")), reward, bool(result.get("done"))

    def close(self) -> None:
        self.client.close()


__all__ = ["OpenEnvClient", "OpenEnvEnvironment", "OpenEnvError", "observation_text"]
