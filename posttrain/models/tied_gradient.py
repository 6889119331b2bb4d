"""One gradient buffer for a tied input embedding and output head (docs/performance.md, "One gradient for a tied
embedding").

A model whose output head shares its weight with the input embedding gets that weight's gradient from two places.
Autograd computes both as (vocabulary, hidden) tensors and adds them: the head's (its backward comes first), then
the embedding's, made by scattering the gradient of the looked-up rows into a fresh zero (V, H) tensor. At a real
vocabulary that second tensor is the largest thing alive in the backward (545 MB in float32 at 151,936 x 896), and
it is almost all zeros: only the rows of the batch's tokens are non-zero.

:func:`tied_gradient` removes it. During one forward, the head's weight goes through :class:`_HeadWeight` (an
identity whose backward hands the head's gradient buffer on) and the embedding's lookup through
:class:`_TiedLookup`, whose backward adds its rows into that buffer in place (``index_add_``) and gives no gradient
of its own. Autograd still waits for both before it accumulates the weight's gradient (the lookup is an input edge of
the weight either way), so gradient hooks (DDP, ZeRO-1/2) see the full sum, once. Where the buffer is not there (no
head gradient, a second lookup), the lookup gives its gradient the usual way.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_EMBEDDING_ARGS = ("input", "weight", "padding_idx", "max_norm", "norm_type", "scale_grad_by_freq", "sparse")


class _Tied:
    """What the head's backward passes to the embedding's: the weight, how many lookups of it the forward made, and
    the head's gradient buffers not yet taken."""

    def __init__(self, weight: torch.Tensor):
        self.weight = weight
        self.lookups = 0
        self.buffers: list[torch.Tensor] = []


class _HeadWeight(torch.autograd.Function):
    """The head's weight, unchanged; its backward keeps the head's gradient for the embedding's backward."""

    @staticmethod
    def forward(ctx, weight, tied):
        ctx.tied = tied
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad):
        tied = ctx.tied
        if (tied.lookups and grad is not None and grad.layout == torch.strided and grad.is_contiguous()
                and not torch.is_grad_enabled()):  # not under create_graph: the buffer is changed in place
            tied.buffers.append(grad)
        return grad, None


class _TiedLookup(torch.autograd.Function):
    """``F.embedding(ids, weight, padding_idx)``; the weight's gradient is added into the head's buffer when there is
    one (and then none is returned), else returned as a dense tensor as ``F.embedding``'s backward does."""

    @staticmethod
    def forward(ctx, ids, weight, padding_idx, tied):
        ctx.save_for_backward(ids)
        ctx.padding_idx, ctx.tied, ctx.shape = padding_idx, tied, weight.shape
        tied.lookups += 1
        return F.embedding(ids, weight, padding_idx)

    @staticmethod
    def backward(ctx, grad):
        (ids,) = ctx.saved_tensors
        index, rows = ids.reshape(-1), grad.reshape(-1, grad.shape[-1])
        if ctx.padding_idx is not None:  # the padding row gets no gradient (as F.embedding)
            keep = index != ctx.padding_idx
            index, rows = index[keep], rows[keep]
        tied = ctx.tied
        if tied.buffers and not torch.is_grad_enabled():
            buffer = tied.buffers.pop()  # the buffer is autograd's again alone, so it becomes .grad without a copy
            buffer.index_add_(0, index, rows.to(buffer.dtype))
            return None, None, None, None
        out = rows.new_zeros(ctx.shape)
        return None, out.index_add_(0, index, rows), None, None


class _RouteLookups(TorchFunctionMode):
    """Sends ``F.embedding`` calls on the tied weight (plain ones: no ``max_norm``, ``scale_grad_by_freq`` or
    ``sparse``) to :class:`_TiedLookup`; every other call runs as it is."""

    def __init__(self, tied: _Tied):
        super().__init__()
        self.tied = tied

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.embedding and torch.is_grad_enabled():
            call = dict(zip(_EMBEDDING_ARGS, args), **kwargs)
            plain = (call.get("max_norm") is None and not call.get("scale_grad_by_freq")
                     and not call.get("sparse"))
            if call.get("weight") is self.tied.weight and plain:
                padding_idx = call.get("padding_idx")
                if padding_idx is not None and padding_idx < 0:
                    padding_idx += self.tied.weight.shape[0]
                return _TiedLookup.apply(call["input"], self.tied.weight, padding_idx, self.tied)
        return func(*args, **kwargs)


def _applies(weight: torch.Tensor, embedding: torch.nn.Module | None) -> bool:
    if embedding is None or getattr(embedding, "weight", None) is not weight or not weight.requires_grad:
        return False
    if not torch.is_grad_enabled() or hasattr(weight, "ds_id"):  # ZeRO-3 partitions the weight: its hooks own it
        return False
    # index_add_ has no deterministic CUDA kernel; F.embedding's backward has
    return not (weight.is_cuda and torch.are_deterministic_algorithms_enabled())


@contextmanager
def tied_gradient(head_weight: torch.Tensor, embedding: torch.nn.Module | None):
    """Within the block (one forward of a model whose output head's weight ``head_weight`` may be the weight of
    ``embedding``, its input embedding), yields ``weight(w)``, which returns the weight the head is to use: when the
    two are tied (and the weight is trained, outside ZeRO-3), the embedding's gradient is added into the head's in
    place instead of making a second (V, H) tensor. Untied, frozen or not under autograd: ``weight(w)`` is ``w``."""
    if not _applies(head_weight, embedding):
        yield lambda w: w
        return
    tied = _Tied(head_weight)
    with _RouteLookups(tied):
        yield lambda w: _HeadWeight.apply(w, tied) if w is head_weight else w


__all__ = ["tied_gradient"]
