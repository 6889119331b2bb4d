"""posttrain's own decode loop for Llama/Qwen2-style causal LMs on CPU: a decode engine of
:func:`posttrain.rollout.generate` (``fast=True``, its default) beside transformers' ``model.generate``, and so the
rollout backend :class:`~posttrain.rollout.backends.DecodeBackend` of the online trainers (``fast_generation``).

At the batch sizes of online training on CPU, a ``model.generate`` decode step costs about twice its matrix
products (docs/performance.md, "Generation"): the products themselves run at half the speed oneDNN reaches on
weights reordered for it, bf16 attention kernels are slow at these sizes and re-set-up for every new key length,
and module calls, masks, the rotary embedding and the re-concatenated KV cache add per-token work. This loop runs
the same computation with the model's own weights: each linear layer's weight cast to the compute dtype and
reordered for oneDNN once per call (q/k/v and gate/up stacked), a float32 KV cache allocated for the whole generation
and written in place, attention over the whole buffer (one shape for every step, unwritten columns masked), rotary
tables computed once, and HF's sampling processors (``min_new_tokens``, temperature, top-k, top-p, min-p) as a few
tensor ops with the same ``torch.multinomial`` draw. Dtypes follow ``model.generate`` under the caller's autocast
region (or none); see :class:`_Decoder`.

:func:`fast_decode_plan` says why a model or a request is not covered (then :func:`generate` uses
``model.generate``): other architectures, adapters or quantized layers (anything but plain ``nn.Linear``), module
hooks, weights off the CPU, sliding-window attention, dynamic RoPE, repetition penalty, mixture sampling,
generation options beyond those above (also those set in the model's ``generation_config``)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

_ARCHS = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}
_ROPE_TYPES = {"default", "linear", "llama3", "yarn"}  # static functions of the position (no dynamic rescaling)
# generation-config fields the loop implements; any other non-default field (ours or the model's) falls back
_HANDLED = {"max_new_tokens", "do_sample", "temperature", "top_p", "top_k", "min_p", "min_new_tokens",
            "pad_token_id", "eos_token_id", "bos_token_id", "use_cache", "output_attentions", "output_hidden_states",
            "return_dict_in_generate", "output_scores", "transformers_version", "cache_implementation", "max_length"}


def _plain(module) -> bool:
    return type(module) is torch.nn.Linear and not module._forward_hooks and not module._forward_pre_hooks


def causal_lm(model):
    """The causal LM that generates for ``model``: the policy of a :class:`~posttrain.models.PolicyAndValue`, the
    language model under a value head, else ``model``."""
    from ..models.policy_value import PolicyAndValue
    from ..models.value_head import _PreTrainedModelWithValueHead

    if isinstance(model, PolicyAndValue):
        return model.policy
    if isinstance(model, _PreTrainedModelWithValueHead):
        return model.pretrained_model
    return model


def fast_decode_plan(model, gen_kwargs: Mapping[str, Any], wrapper=None):
    """``(generation_config, None)`` when the decode loop can stand in for ``model.generate(**gen_kwargs)``, with the
    merged options (the model's ``generation_config`` updated by ``gen_kwargs``); else ``(None, reason)``. ``model``
    is the causal LM (:func:`causal_lm`) of ``wrapper`` (the model :func:`generate` got, unwrapped); ``gen_kwargs``
    what :func:`generate` passes to ``model.generate``."""
    reason = _unsupported_model(model)
    if reason is None and any("forward" in vars(m) for m in {id(model): model, id(wrapper): wrapper}.values()
                              if m is not None) and not torch.is_autocast_enabled("cpu"):
        # a patched forward (accelerate's mixed-precision wrapper) without the enclosing autocast region of
        # BaseTrainer.generation_precision: what it would change is unknown here
        reason = "a patched forward outside an autocast region"
    if reason is not None:
        return None, reason
    gen = copy.deepcopy(model.generation_config)
    unused = gen.update(**gen_kwargs)
    if unused:
        return None, f"generation options {sorted(unused)}"
    other = sorted(k for k in gen.to_diff_dict() if k not in _HANDLED and not k.startswith("_"))
    if other:
        return None, f"generation options {other}"
    if gen.num_beams not in (None, 1):
        return None, "beam search"
    if not isinstance(gen.eos_token_id, int) or not isinstance(gen.pad_token_id, int):
        return None, "several or no EOS / pad token ids"
    if gen.max_new_tokens is None:
        return None, "no max_new_tokens"
    return gen, None


def _unsupported_model(model) -> str | None:
    name = type(model).__name__
    config = getattr(model, "config", None)
    if name not in _ARCHS or getattr(config, "model_type", None) != _ARCHS[name]:
        return f"architecture {name}"
    # transformers' enable_input_require_grads (gradient checkpointing turns it on) hooks the input embedding to make
    # its output require grad: nothing to do under no_grad, so it does not keep the loop from running
    handles = list(getattr(model, "_require_grads_hooks", None) or ())
    if getattr(model, "_require_grads_hook", None) is not None:  # older transformers: one handle
        handles.append(model._require_grads_hook)
    harmless = {h.id for h in handles}
    if getattr(model, "_hf_hook", None) is not None or any(
            set(m._forward_hooks) - harmless or m._forward_pre_hooks or getattr(m, "_hf_hook", None) is not None
            for m in model.modules()):
        return "module hooks (offloading, adapters, instrumentation)"
    if config.hidden_act != "silu":
        return f"activation {config.hidden_act}"
    if any(t != "full_attention" for t in (getattr(config, "layer_types", None) or ())):
        return "sliding-window attention"
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") not in _ROPE_TYPES:
        return f"rope type {rope.get('rope_type')}"
    if config._attn_implementation not in ("sdpa", "eager"):
        return f"attention implementation {config._attn_implementation}"
    inner = model.model
    for layer in inner.layers:
        a, m = layer.self_attn, layer.mlp
        if not all(_plain(p) for p in (a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj)):
            return "adapted or quantized linear layers"
    if not _plain(model.lm_head) or type(inner.embed_tokens) is not torch.nn.Embedding:
        return "adapted output or input embedding"
    devices = {p.device.type for p in model.parameters()}
    if devices != {"cpu"}:
        return f"weights on {sorted(devices)} (the loop is tuned and tested for CPU)"
    return None


def _mkldnn_usable(device: torch.device) -> bool:
    return (device.type == "cpu" and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


class _Linear:
    """One or several linear layers stacked into one (q/k/v, gate/up) in the compute dtype. On CPU the weight is
    reordered once for oneDNN: at decode batch sizes its matrix products take about half the time of ``F.linear``
    on the plain weight (docs/performance.md, "Generation")."""

    def __init__(self, modules, dtype: torch.dtype, batch: int):
        weight = torch.cat([m.weight for m in modules]) if len(modules) > 1 else modules[0].weight
        self.weight = weight.detach().to(dtype)
        self.bias = None
        if any(m.bias is not None for m in modules):
            self.bias = torch.cat([m.bias if m.bias is not None else m.weight.new_zeros(m.out_features)
                                   for m in modules]).detach().to(dtype)
        self.dtype = dtype
        self.packed = None
        if _mkldnn_usable(self.weight.device) and dtype in (torch.float32, torch.bfloat16):
            try:
                self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.contiguous(), batch)
                self.weight = None  # only the reordered copy is used (and kept)
            except RuntimeError:  # a oneDNN build without this dtype: plain F.linear
                self.packed = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype)
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


class _Layer:
    """The tensors of one decoder layer, read once per generation."""

    def __init__(self, layer, dtype: torch.dtype, batch: int):
        a, m = layer.self_attn, layer.mlp
        self.ln1 = (layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon)
        self.ln2 = (layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon)
        self.qkv = _Linear([a.q_proj, a.k_proj, a.v_proj], dtype, batch)
        self.o = _Linear([a.o_proj], dtype, batch)
        self.gate_up = _Linear([m.gate_proj, m.up_proj], dtype, batch)
        self.down = _Linear([m.down_proj], dtype, batch)
        self.split = (a.q_proj.out_features, a.k_proj.out_features, a.v_proj.out_features)
        self.intermediate = m.gate_proj.out_features
        self.scaling = a.scaling


def _rms_norm(h: torch.Tensor, weight_eps) -> torch.Tensor:
    """RMSNorm as Llama/Qwen2 compute it: in float32, cast back, times the weight."""
    weight, eps = weight_eps
    dtype = h.dtype
    x = h.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of (B, heads, T, d): ``x cos + rotate_half(x) sin``, with rotate_half(x) = (-x2, x1) written
    as roll(x) = (x2, x1) times a sine table whose first half is negated."""
    return x * cos + torch.roll(x, x.shape[-1] // 2, dims=-1) * sin_signed


class _Decoder:
    """The causal LM as a function of (tokens, cache position); keys and values in preallocated buffers.

    Dtypes follow ``model.generate`` under the caller's autocast region (or none): matrix products in the compute
    dtype (autocast's, else the weights'), the residual stream, norms and rotary tables in the embedding's dtype.
    Attention reads queries, keys and values rounded to the compute dtype, as autocast's SDPA does; on CPU it then
    computes in float32, whose kernel is several times faster there than bf16's at these sizes."""

    def __init__(self, model, batch: int, max_len: int, compute_dtype: torch.dtype):
        config = model.config
        inner = model.model
        self.compute_dtype = compute_dtype
        self.embed = inner.embed_tokens.weight
        self.norm = (inner.norm.weight, inner.norm.variance_epsilon)
        self.head = _Linear([model.lm_head], compute_dtype, batch)
        self.layers = [_Layer(layer, compute_dtype, batch) for layer in inner.layers]
        self.rotary = inner.rotary_emb
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        device = self.embed.device
        self.attn_dtype = torch.float32 if device.type == "cpu" else compute_dtype
        shape = (batch, self.kv_heads, max_len, self.head_dim)
        # zeros: a decode step attends over the whole buffer (one shape for every step: the CPU matmul kernels are
        # set up per shape), the columns not yet written masked out by the bias
        self.keys = [torch.zeros(shape, dtype=self.attn_dtype, device=device) for _ in self.layers]
        self.values = [torch.zeros(shape, dtype=self.attn_dtype, device=device) for _ in self.layers]

    def rope_tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and the half-negated sin of (B, L) positions, as (B, 1, L, d), in the residual stream's dtype (the
        model's own rotary module computes them)."""
        cos, sin = self.rotary(self.embed[:1].unsqueeze(0), positions)
        half = sin.shape[-1] // 2
        sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
        return cos.unsqueeze(1), sin.unsqueeze(1)

    def _round(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` rounded to the compute dtype, in the attention dtype."""
        return x.to(self.compute_dtype).to(self.attn_dtype)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                scale: float) -> torch.Tensor:
        """Attention of (B, heads, T, d) queries over (B, kv_heads, L, d) keys and values; ``mask`` a (B, 1, T, L)
        additive bias (0 or -inf). One new token: two batched products with the query heads of a key head stacked
        (no repeated keys), which on CPU beats SDPA's kernel at this size; else SDPA."""
        B, H, T, d = q.shape
        if T > 1:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale,
                                                  enable_gqa=self.heads != self.kv_heads)
        q = q.reshape(B, self.kv_heads, H // self.kv_heads, d)
        scores = torch.matmul(q, k.transpose(2, 3)).mul_(scale).add_(mask.view(B, 1, 1, -1))
        return torch.matmul(scores.softmax(dim=-1), v).view(B, H, 1, d)

    def forward(self, tokens: torch.Tensor, start: int, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        """Logits (B, V) of the last of ``tokens`` (B, T), which sit at cache columns ``start:start + T``; ``cos``/
        ``sin`` (B, 1, T, d) their rotary tables; ``mask`` the attention bias of each query over the cached columns
        (0 where it attends, -inf elsewhere; in the attention dtype): (B, 1, T, start + T) for several tokens,
        (B, 1, 1, L) over the whole buffer for one."""
        B, T = tokens.shape
        end = start + T
        d = self.head_dim
        h = F.embedding(tokens, self.embed)
        for w, kc, vc in zip(self.layers, self.keys, self.values):
            q, k, v = w.qkv(_rms_norm(h, w.ln1)).split(w.split, dim=-1)
            q = q.view(B, T, self.heads, d).transpose(1, 2)
            k = k.view(B, T, self.kv_heads, d).transpose(1, 2)
            kc[:, :, start:end] = self._round(_rope(k, cos, sin))
            vc[:, :, start:end] = v.view(B, T, self.kv_heads, d).transpose(1, 2)
            cols = end if T > 1 else kc.shape[2]
            attn = self._attend(self._round(_rope(q, cos, sin)), kc[:, :, :cols], vc[:, :, :cols], mask, w.scaling)
            h = h + w.o(attn.transpose(1, 2).reshape(B, T, -1))
            gate, up = w.gate_up(_rms_norm(h, w.ln2)).split(w.intermediate, dim=-1)
            h = h + w.down(F.silu(gate) * up)
        return self.head(_rms_norm(h[:, -1], self.norm))


def process_logits(scores: torch.Tensor, step: int, *, eos: int, min_new_tokens: int, do_sample: bool,
                   temperature: float, top_k: int, top_p: float, min_p: float | None) -> torch.Tensor:
    """The float32 logits (B, V) of completion token ``step`` after the processors ``model.generate`` applies for
    these options, in its order: EOS barred before ``min_new_tokens``, then (sampling) temperature, top-k, top-p
    and min-p, removed tokens at -inf."""
    if step < min_new_tokens:
        scores[:, eos] = -float("inf")
    if not do_sample:
        return scores
    if temperature != 1.0:
        scores = scores / temperature
    if top_k:
        kth = torch.topk(scores, min(top_k, scores.shape[-1]), dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, -float("inf"))
    if top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=False)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= 1 - top_p
        remove[:, -1] = False  # the most likely token always stays
        scores = scores.masked_fill(remove.scatter(1, order, remove), -float("inf"))
    if min_p is not None:
        probs = scores.softmax(dim=-1)
        remove = probs < min_p * probs.amax(dim=-1, keepdim=True)
        remove.scatter_(1, probs.argmax(dim=-1, keepdim=True), False)
        scores = scores.masked_fill(remove, -float("inf"))
    return scores


def decode_chunk(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, gen_kwargs: Mapping[str, Any],
                 return_logprobs: bool):
    """The engine :func:`~posttrain.rollout.generate` calls for one left-padded chunk of prompts: the new tokens and,
    with ``return_logprobs``, their log-probs, as ``model.generate(**gen_kwargs)`` would give them; None where the
    loop does not cover the model or the request (:func:`fast_decode_plan`), and the caller uses ``model.generate``.
    ``model`` is the unwrapped model given to ``generate``."""
    from ..models.sharding import is_zero3_partitioned

    if is_zero3_partitioned(model):
        return None
    lm = causal_lm(model)
    plan, _ = fast_decode_plan(lm, gen_kwargs, wrapper=model)
    if plan is None:
        return None
    return fast_decode(lm, input_ids, attention_mask, max_new_tokens=plan.max_new_tokens, eos=plan.eos_token_id,
                       pad=plan.pad_token_id, do_sample=bool(plan.do_sample),
                       temperature=plan.temperature if plan.temperature is not None else 1.0, top_k=plan.top_k or 0,
                       top_p=plan.top_p if plan.top_p is not None else 1.0, min_p=plan.min_p,
                       min_new_tokens=plan.min_new_tokens or 0, return_logprobs=return_logprobs)


@torch.no_grad()
def fast_decode(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, max_new_tokens: int, eos: int,
                pad: int, do_sample: bool = False, temperature: float = 1.0, top_k: int | None = 0, top_p: float = 1.0,
                min_p: float | None = None, min_new_tokens: int = 0,
                return_logprobs: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Generate from left-padded ``input_ids`` (B, P) as ``model.generate`` does with these options: returns the
    new tokens (B, T), pad after a row's EOS, T <= ``max_new_tokens`` (fewer when every row ended), and with
    ``return_logprobs`` the log-prob (B, T) of each under the processed distribution it was drawn from. Check
    :func:`fast_decode_plan` first."""
    B, P = input_ids.shape
    device = input_ids.device
    if max_new_tokens <= 0:
        empty = input_ids.new_zeros((B, 0))
        return empty, (torch.zeros((B, 0)) if return_logprobs else None)
    total = P + max_new_tokens
    compute_dtype = (torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type)
                     else model.model.layers[0].self_attn.q_proj.weight.dtype)
    with torch.autocast(device.type, enabled=False):  # every cast explicit (see _Decoder)
        return _decode(_Decoder(model, B, total, compute_dtype), input_ids, attention_mask,
                       max_new_tokens=max_new_tokens, eos=eos, pad=pad, return_logprobs=return_logprobs,
                       options=dict(eos=eos, min_new_tokens=min_new_tokens, do_sample=do_sample,
                                    temperature=temperature, top_k=top_k or 0, top_p=top_p, min_p=min_p))


def _decode(decoder: _Decoder, input_ids, attention_mask, *, max_new_tokens: int, eos: int, pad: int,
            return_logprobs: bool, options: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    B, P = input_ids.shape
    device = input_ids.device
    total = P + max_new_tokens
    do_sample = options["do_sample"]

    valid = torch.zeros((B, total), dtype=torch.bool, device=device)
    valid[:, :P] = attention_mask.bool()
    valid[:, P:] = True
    # positions as model.generate numbers them: the prompt from 0 after its padding, then one per new token
    positions = (valid.long().cumsum(-1) - 1).masked_fill(~valid, 0)
    cos, sin = decoder.rope_tables(positions)
    # prefill: causal within the prompt, padding masked; a padding query attends itself only (finite, never read)
    idx = torch.arange(P, device=device)
    prefill_mask = (idx[None, :] <= idx[:, None])[None] & valid[:, None, :P]
    prefill_mask |= torch.eye(P, dtype=torch.bool, device=device)[None]
    bias = torch.zeros((B, 1, 1, total), dtype=decoder.attn_dtype, device=device).masked_fill_(
        ~valid[:, None, None], -float("inf"))
    logits = decoder.forward(input_ids, 0, cos[:, :, :P], sin[:, :, :P],
                             torch.zeros((B, 1, P, P), dtype=decoder.attn_dtype, device=device).masked_fill_(
                                 ~prefill_mask[:, None], -float("inf")))

    future = torch.arange(total, device=device)[None, :] > torch.arange(total, device=device)[:, None]
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    tokens: list[torch.Tensor] = []
    logps: list[torch.Tensor] = []
    for step in range(max_new_tokens):
        scores = process_logits(logits.float(), step, **options)
        if do_sample:
            nxt = torch.multinomial(scores.softmax(dim=-1), num_samples=1).squeeze(1)
        else:
            nxt = scores.argmax(dim=-1)
        if return_logprobs:
            logps.append(scores.log_softmax(dim=-1).gather(1, nxt[:, None]).squeeze(1))
        nxt = nxt.masked_fill(finished, pad)
        tokens.append(nxt)
        finished |= nxt == eos
        if step == max_new_tokens - 1 or bool(finished.all()):
            break
        col = P + step
        logits = decoder.forward(nxt[:, None], col, cos[:, :, col : col + 1], sin[:, :, col : col + 1],
                                 bias.masked_fill(future[col], -float("inf")))
    new = torch.stack(tokens, dim=1)
    return new, (torch.stack(logps, dim=1).float() if return_logprobs else None)


__all__ = ["causal_lm", "fast_decode", "fast_decode_plan", "process_logits"]
