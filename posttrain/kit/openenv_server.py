"""The kit's guessing game (:class:`posttrain.kit.agents.GuessNumberEnv`) served by a real OpenEnv server.

Runs in an environment with OpenEnv installed (``openenv-core``; ``make openenv-venv`` builds ``.venv-openenv``),
not posttrain's: it imports neither torch nor posttrain, only the game's pure-Python module, by its file path::

    .venv-openenv/bin/python posttrain/kit/openenv_server.py --port 8765 [--high 8 --max_guesses 4]

Clients speak OpenEnv's WebSocket session protocol at ``ws://127.0.0.1:PORT/ws`` (posttrain's
:class:`posttrain.rollout.openenv.OpenEnvEnvironment`, or OpenEnv's own ``GenericEnvClient``): ``reset`` takes an
optional ``secret``, the action is ``{"message": "<the model's turn>"}``, the observation ``{"feedback": ...}``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from typing import Any

from openenv.core.env_server.http_server import create_fastapi_app
from openenv.core.env_server.interfaces import Environment
from openenv.core.env_server.types import Action, Observation, State


def _game_module():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "agents.py")
    spec = importlib.util.spec_from_file_location("posttrain_kit_agents", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GuessNumberEnv = _game_module().GuessNumberEnv


class GuessAction(Action):
    message: str


class GuessObservation(Observation):
    feedback: str = ""


def make_environment_class(high: int, max_guesses: int):
    class GuessNumberEnvironment(Environment):
        """One game a session (OpenEnv gives each WebSocket session its own instance)."""

        SUPPORTS_CONCURRENT_SESSIONS = True

        def __init__(self):
            super().__init__()
            self.game = GuessNumberEnv(high=high, max_guesses=max_guesses)
            self._state = State(step_count=0)

        def reset(self, seed: int | None = None, episode_id: str | None = None, secret: int | None = None,
                  **kwargs: Any) -> GuessObservation:
            if seed is not None:
                self.game.rng.seed(seed)
            self.game.reset(secret=secret)
            self._state = State(episode_id=episode_id, step_count=0)
            return GuessObservation(feedback="", done=False, reward=None)

        def step(self, action: GuessAction, timeout_s: float | None = None, **kwargs: Any) -> GuessObservation:
            feedback, reward, done = self.game.step(action.message)
            self._state.step_count += 1
            return GuessObservation(feedback=feedback, done=done, reward=reward)

        @property
        def state(self) -> State:
            return self._state

    return GuessNumberEnvironment


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--high", type=int, default=8)
    parser.add_argument("--max_guesses", type=int, default=4)
    parser.add_argument("--max_sessions", type=int, default=512, help="concurrent games (one per rollout)")
    args = parser.parse_args(argv)
    import uvicorn

    app = create_fastapi_app(make_environment_class(args.high, args.max_guesses), GuessAction, GuessObservation,
                             max_concurrent_envs=args.max_sessions)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
