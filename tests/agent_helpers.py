"""Helpers of the agent tests: a real OpenEnv server with the kit's guessing game (posttrain/kit/openenv_server.py),
and a tiny model that ends its turns often enough for multi-turn rollouts."""

import contextlib
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def server_python() -> str:
    """The interpreter of the OpenEnv server's own environment (`make openenv-venv`), or $POSTTRAIN_OPENENV_PYTHON."""
    python = os.environ.get("POSTTRAIN_OPENENV_PYTHON") or str(ROOT / ".venv-openenv" / "bin" / "python")
    if not os.path.exists(python):
        pytest.skip("the OpenEnv server environment is not built: run `make openenv-venv` (make test builds it)")
    return python


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def openenv_server(high: int = 8, max_guesses: int = 4, timeout: float = 90.0):
    """Start the kit's OpenEnv server on 127.0.0.1 (a free port), wait until it accepts a session, yield its URL, and
    stop it."""
    port = _free_port()
    log = open(os.devnull, "w")
    proc = subprocess.Popen([server_python(), str(ROOT / "posttrain" / "kit" / "openenv_server.py"), "--port",
                             str(port), "--high", str(high), "--max_guesses", str(max_guesses)],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the OpenEnv server exited with code {proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the OpenEnv server did not come up within {timeout} s") from None
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def eos_prone(model, tokenizer, p_eos=0.25):
    """Make ``model`` (a random tiny model, which rarely samples EOS) end a turn with probability about ``p_eos`` per
    token: EOS's output row points along the mean final hidden state, scaled to that probability."""
    import torch

    with torch.no_grad():
        ids = torch.randint(4, 1000, (8, 24), generator=torch.Generator().manual_seed(0))
        h = model(ids, output_hidden_states=True).hidden_states[-1].reshape(-1, model.config.hidden_size)
        w = model.get_output_embeddings().weight
        w[tokenizer.eos_token_id] = 0
        target = torch.logsumexp(h @ w.T, dim=-1).mean() + torch.log(torch.tensor(p_eos / (1 - p_eos)))
        m = h.mean(0)
        w[tokenizer.eos_token_id] = m * (target / (h @ m).mean())
    return model


__all__ = ["eos_prone", "openenv_server", "server_python"]
