"""A stand-in for the ``vllm`` package, for tests on machines without a GPU (put ``tests/fake_vllm`` first on
``sys.path``). Only what posttrain calls exists, with vLLM's names and shapes:

* ``SamplingParams`` with vLLM's keyword arguments (an unknown one is a TypeError, as in vLLM);
* ``LLM(model, **engine_kwargs)``: loads the transformers model from ``model`` and samples with
  :func:`posttrain.rollout.generate`; ``generate`` takes ``{"prompt_token_ids": [...]}`` prompts and returns
  ``RequestOutput``-like objects (EOS kept in ``token_ids``, per-token ``{token_id: Logprob}`` dicts when
  ``logprobs`` is set); ``collective_rpc`` runs a function (or a ``worker_extension_cls`` method) on the one
  worker, whose ``model_runner.model.load_weights`` copies transformers-named tensors into the model (an unknown
  name is a KeyError, as in vLLM); ``sleep(level=2)`` discards the weights (zeros), ``wake_up`` does not bring
  them back (they must be sent again).

Every instance records its engine kwargs and calls in ``LLM.instances[-1].calls``, and a copy of its weights at
every generation in ``weights_at_generate``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

import torch

__version__ = "0.0.0-fake"


class SamplingParams:
    def __init__(self, *, n: int = 1, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                 min_p: float = 0.0, repetition_penalty: float = 1.0, max_tokens: int | None = 16,
                 seed: int | None = None, logprobs: int | None = None, stop_token_ids: list[int] | None = None,
                 presence_penalty: float = 0.0, frequency_penalty: float = 0.0):
        if top_k < -1:
            raise ValueError(f"top_k must be -1 (disable), 0 (disable) or at least 1, got {top_k}.")
        if not 0.0 <= min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {min_p}.")
        self.n, self.temperature, self.top_p, self.top_k, self.min_p = n, temperature, top_p, top_k, min_p
        self.repetition_penalty, self.max_tokens = repetition_penalty, max_tokens
        self.seed, self.logprobs = seed, logprobs
        self.stop_token_ids = stop_token_ids or []


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)
    finished: bool = True


class _VllmModel:
    """The worker's model: ``load_weights`` takes transformers names."""

    def __init__(self, hf_model):
        self.hf_model = hf_model

    def load_weights(self, weights):
        params = dict(self.hf_model.named_parameters())
        loaded = set()
        with torch.no_grad():
            for name, tensor in weights:
                if name not in params:
                    raise KeyError(f"fake vLLM: the model has no parameter {name!r}")
                if tuple(params[name].shape) != tuple(tensor.shape):
                    raise ValueError(f"fake vLLM: {name} has shape {tuple(params[name].shape)}, got "
                                     f"{tuple(tensor.shape)}")
                params[name].copy_(tensor)
                loaded.add(name)
        return loaded


class _ModelRunner:
    def __init__(self, model):
        self.model = model


class _Worker:
    def __init__(self, hf_model):
        self.device = torch.device("cpu")
        self.model_runner = _ModelRunner(_VllmModel(hf_model))


class LLM:
    instances: list[LLM] = []

    def __init__(self, model: str, **kwargs: Any):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_path, self.kwargs = model, kwargs
        self.hf_model = AutoModelForCausalLM.from_pretrained(model).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        worker_cls = _Worker
        if kwargs.get("worker_extension_cls"):
            module, _, name = kwargs["worker_extension_cls"].rpartition(".")
            worker_cls = type("Worker", (getattr(importlib.import_module(module), name), _Worker), {})
        self.worker = worker_cls(self.hf_model)
        self.calls: list[tuple] = []
        self.weights_at_generate: list[dict[str, torch.Tensor]] = []
        LLM.instances.append(self)

    def generate(self, prompts, sampling_params: SamplingParams | None = None, use_tqdm: bool = True):
        from posttrain.rollout import generate

        sp = sampling_params or SamplingParams()
        ids = [list(p["prompt_token_ids"]) for p in prompts]
        self.calls.append(("generate", len(ids), sp.n))
        self.weights_at_generate.append({k: v.detach().clone() for k, v in self.hf_model.named_parameters()})
        gens = generate(self.hf_model, self.tokenizer, prompt_ids=ids, num_return_sequences=sp.n,
                        max_new_tokens=sp.max_tokens, do_sample=sp.temperature > 0, temperature=sp.temperature or 1.0,
                        top_p=sp.top_p, top_k=max(sp.top_k, 0), min_p=sp.min_p or None,
                        repetition_penalty=sp.repetition_penalty, seed=sp.seed,
                        return_logprobs=sp.logprobs is not None)
        outputs = []
        for i, prompt in enumerate(ids):
            samples = []
            for j in range(sp.n):
                row = i * sp.n + j
                tokens = gens.completion_ids[row]
                logprobs = None
                if gens.logprobs is not None:
                    logprobs = [{t: Logprob(lp, rank=1)} for t, lp in zip(tokens, gens.logprobs[row])]
                samples.append(CompletionOutput(index=j, text=gens.texts[row], token_ids=tokens,
                                                cumulative_logprob=None, logprobs=logprobs))
            outputs.append(RequestOutput(request_id=str(i), prompt=None, prompt_token_ids=prompt,
                                         outputs=samples[::-1]))  # vLLM does not promise the sample order
        return outputs

    def collective_rpc(self, method, timeout: float | None = None, args: tuple = (), kwargs: dict | None = None):
        self.calls.append(("collective_rpc", method if isinstance(method, str) else method.__name__))
        if isinstance(method, str):
            return [getattr(self.worker, method)(*args, **(kwargs or {}))]
        return [method(self.worker, *args, **(kwargs or {}))]

    def reset_prefix_cache(self) -> bool:
        self.calls.append(("reset_prefix_cache",))
        return True

    def sleep(self, level: int = 1) -> None:
        self.calls.append(("sleep", level))
        if level == 2:
            with torch.no_grad():
                for p in self.hf_model.parameters():
                    p.zero_()

    def wake_up(self, tags: list[str] | None = None) -> None:
        self.calls.append(("wake_up", tuple(tags or ())))
