"""The output head fused with the log-softmax: per-token log-probs of given target tokens straight from the last
hidden states, in chunks of tokens, so no (tokens, vocabulary) logits tensor is ever alive, in forward or backward
(docs/performance.md, "Log-probs without full-vocabulary tensors").

Both passes work in tiles of tokens and of vocabulary rows, so the weight is cast to the compute precision (autocast's,
else the weight's) a block of rows at a time, never whole. Forward: ``z = h W^T (+ b)`` for the tile, then in float32
``z / T``; each token's log-sum-exp ``L`` accumulates over the blocks (a running maximum and rescaled sum; ``L`` is
kept, one float a token) and gives ``log p_t = z_t - L``, with the statistics asked for (entropy ``L - sum_v p_v z_v``,
the mean logit, whether the target is the (first) argmax, ``log sum_v p_v^2``; detached) accumulated alike. Backward
recomputes each tile's logits: with ``p = softmax(z / T)`` (which needs only ``L``, not the whole row),
``d log p_t / d z = (onehot(t) - p) / T``, so the tile adds ``G W`` to ``grad_h`` and ``G^T h`` to its rows of
``grad_W`` (``G = g (onehot - p) / T``). Peak memory is one tile's logits, whatever the vocabulary.

:func:`fused_head` swaps a model's output head for this computation during one forward, through DDP, DeepSpeed
(ZeRO-3 gathers the head's weight for that call and for its backward, as for the head itself) and PEFT wrappers: the
model then returns, in place of logits, a (1, N, 1 + k) tensor: the N log-probs and k statistics.
:func:`fused_head_supported` says where it applies: a plain ``nn.Linear`` head (tied or not; not LoRA-wrapped or
quantized) of a model that uses its logits as the head gives them (no final soft-capping or logit scaling).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from .heads import output_head, select_head_positions
from .tied_gradient import tied_gradient
from .wrappers import base_model

STATS = ("entropy", "mean_logit", "top1", "log_sum_sq_probs")
"""The per-token statistics the fused head can add to the log-probs (all detached)."""

CHUNK_BYTES = 64 * 2**20
"""Float32 logits of one chunk: 64 MiB, about 110 tokens at a 151,936-token vocabulary (docs/performance.md)."""

VOCAB_BLOCK = 16384
"""Most rows of the weight forward and backward cast and multiply at once (29 MiB in bf16 at hidden size 896)."""

# config fields that change the logits after the head; where one is set, the fused head does not apply
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def chunk_tokens(vocab_size: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Tokens per chunk so one chunk's float32 logits take about ``chunk_bytes``."""
    return max(1, chunk_bytes // (4 * max(int(vocab_size), 1)))


def _compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return weight.dtype


def _chunk_logits(h, weight, bias, dtype, temperature) -> torch.Tensor:
    """Float32 logits of one chunk; ``weight`` and ``bias`` already in ``dtype`` (cast once a call, not a chunk)."""
    z = h.to(dtype) @ weight.t()
    if bias is not None:
        z = z + bias
    z = z.float()
    return z / temperature if temperature != 1.0 else z


def _tiles(vocab: int, chunk: int) -> tuple[int, int]:
    """(rows of the weight, tokens) of one tile: the vocabulary in equal blocks of at most :data:`VOCAB_BLOCK` rows,
    and as many tokens as keep a tile's logits the size of a ``chunk``-token row of the whole vocabulary."""
    blocks = -(-vocab // VOCAB_BLOCK)
    return -(-vocab // blocks), chunk * blocks


def _weight_blocks(weight, bias, dtype, block: int):
    """``(v0, v1, w, b)`` for each block of ``block`` rows: the rows ``v0:v1`` of the weight and bias in ``dtype``."""
    for v0 in range(0, weight.shape[0], block):
        v1 = min(v0 + block, weight.shape[0])
        yield v0, v1, weight[v0:v1].to(dtype), bias[v0:v1].to(dtype) if bias is not None else None


class _FusedHeadLogps(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature: float, chunk: int, stats: tuple[str, ...]):
        # tiles of (tokens, vocabulary block), the weight cast a block at a time; each token's log-sum-exp and
        # statistics accumulate over the blocks (running maximum m, sum of e = exp(z - m), rescaled when m grows)
        dtype = _compute_dtype(hidden, weight)
        n, vocab = hidden.shape[0], weight.shape[0]
        block, tokens = _tiles(vocab, chunk)

        def zeros():
            return hidden.new_zeros(n, dtype=torch.float32)

        run_max, run_sum, target_logit = torch.full_like(zeros(), -float("inf")), zeros(), zeros()
        e_z = zeros() if "entropy" in stats else None  # sum e z
        e_sq = zeros() if "log_sum_sq_probs" in stats else None  # sum e^2
        z_sum = zeros() if "mean_logit" in stats else None
        best = torch.full_like(zeros(), -float("inf")) if "top1" in stats else None
        best_at = torch.zeros(n, dtype=torch.long, device=hidden.device) if "top1" in stats else None
        with torch.no_grad(), torch.autocast(hidden.device.type, enabled=False):
            for v0, v1, w, b in _weight_blocks(weight, bias, dtype, block):
                for start in range(0, n, tokens):
                    rows = slice(start, min(start + tokens, n))
                    z = _chunk_logits(hidden[rows], w, b, dtype, temperature)
                    t = targets[rows] - v0
                    hit = (t >= 0) & (t < v1 - v0)
                    target_logit[rows] += torch.where(hit, z.gather(1, t.clamp(0, v1 - v0 - 1)[:, None])[:, 0], 0.0)
                    top, at = z.max(-1)
                    if best is not None:  # the first maximum over the whole row, as argmax
                        better = top > best[rows]
                        best[rows] = torch.where(better, top, best[rows])
                        best_at[rows] = torch.where(better, at + v0, best_at[rows])
                    if z_sum is not None:
                        z_sum[rows] += z.sum(-1)
                    m = torch.maximum(run_max[rows], top)
                    scale = torch.exp(run_max[rows] - m)
                    e = (z - m[:, None]).exp_()
                    run_sum[rows] = run_sum[rows] * scale + e.sum(-1)
                    if e_z is not None:
                        e_z[rows] = e_z[rows] * scale + (e * z).sum(-1)
                    if e_sq is not None:
                        e_sq[rows] = e_sq[rows] * scale.square() + e.square().sum(-1)
                    run_max[rows] = m
                    del z, e
        lse = run_max + run_sum.log()
        logps = target_logit - lse
        extra = hidden.new_zeros((n, len(stats)), dtype=torch.float32)
        for j, name in enumerate(stats):
            if name == "entropy":
                extra[:, j] = lse - e_z / run_sum
            elif name == "mean_logit":
                extra[:, j] = z_sum / vocab
            elif name == "top1":
                extra[:, j] = (best_at == targets).float()
            else:  # log_sum_sq_probs: log sum p^2 = log sum e^2 + 2 m - 2 lse
                extra[:, j] = e_sq.log() + 2 * run_max - 2 * lse
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.temperature, ctx.chunk, ctx.dtype = temperature, chunk, dtype
        ctx.mark_non_differentiable(extra)
        return logps, extra

    @staticmethod
    def backward(ctx, grad_logps, _grad_extra):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        temperature, dtype = ctx.temperature, ctx.dtype
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        # tiles of (tokens, vocabulary block): the weight is cast to the compute dtype a block at a time (each block
        # once a call), so no whole copy of it sits beside its float32 gradient; a tile has the forward chunk's size
        block, tokens = _tiles(weight.shape[0], ctx.chunk)
        grad_h = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b and bias is not None else None
        g_all = grad_logps.float().unsqueeze(-1)
        with torch.autocast(hidden.device.type, enabled=False):
            for v0, v1, w, b in _weight_blocks(weight, bias, dtype, block):
                for start in range(0, hidden.shape[0], tokens):
                    stop = min(start + tokens, hidden.shape[0])
                    g, t = g_all[start:stop], targets[start:stop] - v0
                    # in place on the tile's float32 logits: one (tokens, block) tensor alive, not three
                    d = _chunk_logits(hidden[start:stop], w, b, dtype, temperature)
                    d.sub_(lse[start:stop].unsqueeze(-1)).exp_().mul_(-g)  # -g p
                    hit = ((t >= 0) & (t < v1 - v0)).nonzero().squeeze(-1)
                    d.index_put_((hit, t[hit]), g[hit, 0], accumulate=True)  # + g onehot(t)
                    if temperature != 1.0:
                        d.div_(temperature)
                    if grad_b is not None:
                        grad_b[v0:v1] += d.sum(0)
                    if grad_w is not None:  # in place, in float32: no (V, H) temporary a tile
                        grad_w[v0:v1].addmm_(d.t(), hidden[start:stop].float())
                    if grad_h is not None:
                        grad_h[start:stop] += (d.to(dtype) @ w).float()
        return (grad_h.to(hidden.dtype) if grad_h is not None else None,
                grad_w.to(weight.dtype) if grad_w is not None else None,
                grad_b.to(bias.dtype) if grad_b is not None else None, None, None, None, None)


def fused_head_logps(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor, *,
                     temperature: float = 1.0, stats: tuple[str, ...] = (), chunk_size: int | None = None
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Log-probs (N,) of ``targets`` (N,) under ``softmax((hidden @ weight.T + bias) / temperature)`` for ``hidden``
    (N, H), without the (N, V) logits: see the module docstring. Returns the float32 log-probs (differentiable in
    ``hidden``, ``weight`` and ``bias``) and the requested ``stats`` (names of :data:`STATS`; (N,), detached)."""
    unknown = set(stats) - set(STATS)
    if unknown:
        raise ValueError(f"Unknown fused-head statistics {sorted(unknown)}; valid: {', '.join(STATS)}.")
    chunk = chunk_size or chunk_tokens(weight.shape[0])
    logps, extra = _FusedHeadLogps.apply(hidden, weight, bias, targets.long(), float(temperature), int(chunk),
                                         tuple(stats))
    return logps, {name: extra[:, j] for j, name in enumerate(stats)}


class _ChunkedRecompute(torch.autograd.Function):
    """Per-token values ``fn(rows, h[rows], w, b, *shared)`` (N,) computed chunk by chunk without keeping any chunk's
    intermediates; backward recomputes each chunk with gradients (activation checkpointing at the chunk level). For
    values whose gradient has no short closed form (GKD's divergence). ``w`` and ``b`` are the weight and bias in the
    compute precision and ``shared = setup()`` further tensors (a frozen head's weight in its precision): both made
    once a call, in forward and again in backward, not kept in between and not once a chunk."""

    @staticmethod
    def forward(ctx, fn, setup, chunk: int, hidden, weight, bias):
        dtype = _compute_dtype(hidden, weight)
        n = hidden.shape[0]
        out = hidden.new_empty(n, dtype=torch.float32)
        with torch.no_grad():
            w, b, shared = weight.to(dtype), bias.to(dtype) if bias is not None else None, setup()
            for start in range(0, n, chunk):
                out[start:start + chunk] = fn(slice(start, start + chunk), hidden[start:start + chunk], w, b, *shared)
        ctx.fn, ctx.setup, ctx.chunk, ctx.dtype = fn, setup, chunk, dtype
        ctx.autocast = (torch.is_autocast_enabled(hidden.device.type), torch.get_autocast_dtype(hidden.device.type))
        ctx.save_for_backward(hidden, weight, bias)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, bias = ctx.saved_tensors
        need = ctx.needs_input_grad[3:6]
        grad_h = torch.zeros_like(hidden) if need[0] else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need[1] else None
        grad_b = torch.zeros_like(bias, dtype=torch.float32) if need[2] and bias is not None else None
        with torch.no_grad():  # leaves in the compute precision: each chunk's gradient is taken with respect to them
            w = weight.detach().to(ctx.dtype).requires_grad_(need[1])
            b = bias.detach().to(ctx.dtype).requires_grad_(need[2]) if bias is not None else None
            shared = ctx.setup()
        enabled, dtype = ctx.autocast
        for start in range(0, hidden.shape[0], ctx.chunk):
            h = hidden[start:start + ctx.chunk].detach().requires_grad_(need[0])
            with torch.enable_grad(), torch.autocast(hidden.device.type, dtype=dtype, enabled=enabled):
                value = ctx.fn(slice(start, start + ctx.chunk), h, w, b, *shared)
            inputs = [x for x, n in zip((h, w, b), need) if n and x is not None]
            grads = iter(torch.autograd.grad(value, inputs, grad_out[start:start + ctx.chunk].to(value.dtype)))
            if need[0]:
                grad_h[start:start + ctx.chunk] = next(grads)
            if need[1]:
                grad_w.add_(next(grads))  # float32 += compute dtype, element by element: no float32 copy
            if grad_b is not None:
                grad_b.add_(next(grads))
        return (None, None, None, grad_h, grad_w.to(weight.dtype) if grad_w is not None else None,
                grad_b.to(bias.dtype) if grad_b is not None else None)


def fused_head_divergence(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                          other_hidden: torch.Tensor, other_weight: torch.Tensor, other_bias: torch.Tensor | None,
                          divergence, *, chunk_size: int | None = None) -> torch.Tensor:
    """Per-token ``divergence(logits, other_logits)`` (N,) between two heads' distributions, ``hidden`` (N, H)
    through ``weight`` (differentiable) and ``other_hidden`` (N, H') through ``other_weight`` (a frozen model's,
    no gradient), chunk by chunk: neither (N, V) logits tensor exists, in forward or backward (each chunk is
    recomputed in backward). ``divergence`` maps two (chunk, V) float32 logit tensors to (chunk,) values."""
    if other_weight.shape[0] != weight.shape[0]:
        raise ValueError(f"The two heads' vocabularies differ: {weight.shape[0]} and {other_weight.shape[0]}.")
    other_hidden, other_weight = other_hidden.detach(), other_weight.detach()
    other_bias = other_bias.detach() if other_bias is not None else None
    other_dtype = _compute_dtype(hidden, other_weight)

    def setup():  # the frozen head in its compute precision, once a call
        return other_weight.to(other_dtype), other_bias.to(other_dtype) if other_bias is not None else None

    def per_chunk(rows, h, w, b, ow, ob):
        with torch.autocast(h.device.type, enabled=False):
            z = _chunk_logits(h, w, b, w.dtype, 1.0)
            with torch.no_grad():
                z_other = _chunk_logits(other_hidden[rows], ow, ob, ow.dtype, 1.0)
            return divergence(z, z_other)

    chunk = chunk_size or max(1, chunk_tokens(weight.shape[0]) // 2)  # two logit chunks alive
    return _ChunkedRecompute.apply(per_chunk, setup, int(chunk), hidden, weight, bias)


def fused_head_supported(model) -> bool:
    """True when :func:`fused_head` computes exactly what the model's own head and logits would: a plain
    ``nn.Linear`` output head without hooks of its own, and no transformation of the logits after it."""
    try:
        head = output_head(model)
    except ValueError:
        return False
    if type(head) is not torch.nn.Linear:  # LoRA-wrapped, quantized or custom heads keep the unfused path
        return False
    config = getattr(base_model(model), "config", None)
    configs = [config, getattr(config, "text_config", None)]
    return not any(getattr(c, name, None) not in (None, 1, 1.0) for c in configs if c is not None
                   for name in _LOGIT_TRANSFORMS)


@contextmanager
def head_computes(model, positions: torch.Tensor, compute):
    """Within the block, the output head of ``model`` returns ``compute(hidden, weight)`` for the (N, H) hidden states
    at the N True entries of ``positions`` (row-major) instead of logits; ``model(...).logits`` is what it returns
    (shape (1, N, ...)). ``weight`` is the head's weight as ``compute`` is to use it: where the head is tied to the
    input embedding, the embedding's gradient is added into the head's (:mod:`~posttrain.models.tied_gradient`), so
    a forward in the block holds one (V, H) weight gradient, not two. The positions are selected as for the unfused
    path (:func:`~posttrain.models.select_head_positions`); the head's own hooks still run (ZeRO-3 gathers its weight
    for the call and for its backward)."""
    head = output_head(model)
    own = vars(head).get("forward")  # normally none: the class's forward
    base = base_model(model)
    embeddings = base.get_input_embeddings() if hasattr(base, "get_input_embeddings") else None
    with tied_gradient(head.weight, embeddings) as weight:
        head.forward = lambda selected: compute(selected[0], weight(head.weight))  # (1, N, H) after the pre-hook
        try:
            with select_head_positions(model, positions):
                yield head
        finally:
            if own is None:
                del head.forward
            else:
                head.forward = own


@contextmanager
def fused_head(model, positions: torch.Tensor, targets: torch.Tensor, *, temperature: float = 1.0,
               stats: tuple[str, ...] = (), chunk_size: int | None = None):
    """Within the block, ``model(...)`` returns as ``logits`` a (1, N, 1 + len(stats)) tensor: the log-probs of
    ``targets`` (N,) at the N True entries of ``positions`` (row-major), then the statistics. Check
    :func:`fused_head_supported` first."""
    head = output_head(model)

    def compute(h, weight):
        logps, extra = fused_head_logps(h, weight, head.bias, targets.to(h.device), temperature=temperature,
                                        stats=stats, chunk_size=chunk_size)
        return torch.stack([logps, *(extra[s] for s in stats)], -1).unsqueeze(0)

    with head_computes(model, positions, compute):
        yield


__all__ = ["STATS", "CHUNK_BYTES", "chunk_tokens", "fused_head_logps", "fused_head_divergence", "fused_head_supported",
           "head_computes", "fused_head"]
