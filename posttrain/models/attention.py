"""Attention sequence by sequence for padding-free rows on sdpa (``per_sequence_attention``, on by default).

A padding-free batch is best laid out as one row with every sequence back to back (no padding at all), but sdpa
sees that row as one long sequence and needs a dense block-diagonal mask over it. Bin-packing the batch into rows
no longer than its longest sequence avoids that mask, but those rows still pad 15-20% of their positions.
:data:`PER_SEQUENCE_SDPA` is an attention implementation (registered with transformers under that name) that makes
the one-row layout cheap on sdpa: inside :func:`per_sequence_rows` it slices each sequence out of the row
(sequences start where ``position_ids`` is 0) and runs sdpa on it with ``is_causal=True``, at its length rounded up
by :func:`bucket_length`. Everywhere else (generation, padded batches, a forward of your own) it is transformers'
sdpa with its mask. Measured on CPU against bin-packed rows: SFT, DPO and KTO steps 1.2-1.3x faster at 0.87-0.92x
the peak memory, with the same loss (``docs/performance.md``, "Attention per sequence"). The model's config keeps the name
only in memory: ``config.json`` never records it. The collators lay a batch out as one row only where that saves
more positions than the extra calls cost (:func:`call_cost`, ``data.collators.padding_free_rows``).

The trainers enter the context for their own padding-free batches only (``BaseTrainer.sequence_rows``), around the
whole training step, backward included: gradient checkpointing recomputes the forward during backward, and the
recomputation must take the same path as the forward.
"""

from __future__ import annotations

import functools
import threading
import warnings
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from ..data.collators import row_width
from .wrappers import unwrap

PER_SEQUENCE_SDPA = "posttrain_per_sequence_sdpa"
CALL_COST_PARAMETERS = 3.4e6
"""A sequence's attention calls cost about as much as one position's work in a layer of this many parameters
(forward, recomputation and backward; measured on CPU with the benchmark's model, hidden size 512: one call per
sequence and layer against about 0.13 ms per position and layer). :func:`call_cost` scales it to a model."""


def call_cost(model) -> float:
    """The cost of running one more sequence through the per-sequence path, in positions' work of ``model``: at
    least 1, more for small layers (where a call's fixed cost weighs more than a position's products)."""
    base = unwrap(model)
    if hasattr(base, "get_base_model"):  # PEFT
        base = base.get_base_model()
    config = getattr(base, "config", None)
    config = getattr(config, "text_config", None) or config
    hidden = getattr(config, "hidden_size", None) or 0
    inner = getattr(config, "intermediate_size", None) or 4 * hidden
    per_layer = 4 * hidden * hidden + 3 * hidden * inner
    return max(1.0, CALL_COST_PARAMETERS / per_layer) if per_layer else 1.0


def bucket_length(n: int) -> int:
    """The length a sequence's attention runs at: ``data.collators.row_width``'s buckets (multiples of 64, or of 1/8
    of the largest power of two not above ``n``). sdpa's bf16 backward on CPU keeps about 2 MB of state for every
    distinct sequence length it has run (up to about 900 MB); the rounding bounds the lengths."""
    return row_width(n, buckets=True)


_state = threading.local()


@contextmanager
def per_sequence_rows(active: bool = True):
    """Within this context, :data:`PER_SEQUENCE_SDPA` reads its rows as sequences laid end to end."""
    previous = getattr(_state, "active", False)
    _state.active = active
    try:
        yield
    finally:
        _state.active = previous
        _state.bounds = None


def _row_segments(position_ids: torch.Tensor, row: int) -> list[tuple[int, int]]:
    """The (start, end) of each sequence of ``row``, found once per ``position_ids`` tensor: every layer of a forward
    (and its recomputation) gets the same tensor, and reading the bounds to the host is a device sync."""
    cached = getattr(_state, "bounds", None)
    if cached is None or cached[0] is not position_ids:
        cached = _state.bounds = (position_ids, {})
    if row not in cached[1]:
        cached[1][row] = _segments(position_ids[row if position_ids.shape[0] > 1 else 0])
    return cached[1][row]


def _segments(positions: torch.Tensor) -> list[tuple[int, int]]:
    starts = (positions == 0).nonzero().flatten().tolist()
    if not starts or starts[0] != 0:
        starts = [0] + starts
    bounds = starts + [positions.numel()]
    return list(zip(bounds[:-1], bounds[1:]))


def per_sequence_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """transformers attention function: (B, H, L, D) query and (B, H_kv, L, D) key/value -> ((B, L, H, D), None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.get("position_ids")
    active = getattr(_state, "active", False)
    if active and position_ids is None:
        raise RuntimeError(
            f"per_sequence_attention: {type(module).__name__} does not pass position_ids to its attention function, "
            "so the sequences of a padding-free row cannot be told apart. Set per_sequence_attention=False (rows "
            "bin-packed with a mask) or padding_free=False.")
    if not active or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if "sliding_window" not in kwargs and _windowed(getattr(module, "config", None)):
        raise RuntimeError(
            f"per_sequence_attention: {type(module).__name__} does not pass its sliding window to the attention "
            "function, so the per-sequence path cannot apply it. Set per_sequence_attention=False.")
    window = kwargs.get("sliding_window")
    gqa = query.shape[1] != key.shape[1]
    length = query.shape[2]
    rows = []
    for b in range(query.shape[0]):
        parts = []
        for s, e in _row_segments(position_ids, b):
            # each sequence at its bucket length: the positions past its end are the next sequence's (zeros at the
            # row end), which the causal mask keeps its own queries from; their outputs are dropped (no gradient)
            stop = s + bucket_length(e - s)
            q, k, v = (t[b:b + 1, :, s:min(stop, length)] for t in (query, key, value))
            if stop > length:
                q, k, v = (F.pad(t, (0, 0, 0, stop - length)) for t in (q, k, v))
            # a sliding window narrower than the sequence: the causal band of that width (transformers' definition:
            # a query sees the `window` positions ending at itself), else plain causal attention
            band = _band_mask(stop - s, window, q.device) if window and e - s > window else None
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=band, dropout_p=dropout if module.training else 0.0,
                                                 is_causal=band is None, scale=scaling, enable_gqa=gqa)
            parts.append(out[:, :, :e - s])
        rows.append(torch.cat(parts, dim=2) if len(parts) > 1 else parts[0])
    return torch.cat(rows, dim=0).transpose(1, 2).contiguous(), None


def _windowed(config) -> bool:
    """True when ``config``'s layers (some of them) attend within a sliding window."""
    if config is None or not getattr(config, "sliding_window", None) or not getattr(config, "use_sliding_window", True):
        return False
    layer_types = getattr(config, "layer_types", None)
    return layer_types is None or "sliding_attention" in layer_types


@functools.lru_cache(maxsize=32)
def _band_mask(n: int, window: int, device) -> torch.Tensor:
    """(n, n) boolean mask: query i sees keys i - window < j <= i. Cached: ``n`` is a bucket length, so every layer
    and step of a run asks for the same few (read-only) masks."""
    i = torch.arange(n, device=device)
    offset = i[:, None] - i[None, :]
    return (offset >= 0) & (offset < window)


def per_sequence_mask(*args, **kwargs):
    """transformers mask function: none inside :func:`per_sequence_rows` (the rows' ``position_ids`` delimit the
    sequences; building the dense (N, N) mask of a long row costs hundreds of MB of intermediates), sdpa's outside."""
    from transformers.masking_utils import sdpa_mask

    return None if getattr(_state, "active", False) else sdpa_mask(*args, **kwargs)


def register() -> None:
    """Register :data:`PER_SEQUENCE_SDPA` with transformers (attention and mask functions)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(PER_SEQUENCE_SDPA, per_sequence_attention)
    AttentionMaskInterface.register(PER_SEQUENCE_SDPA, per_sequence_mask)


def use_per_sequence_attention(model) -> bool:
    """Switch an sdpa model to :data:`PER_SEQUENCE_SDPA`; returns whether it runs it (False for other kernels)."""
    base = unwrap(model)
    if hasattr(base, "get_base_model"):  # PEFT
        base = base.get_base_model()
    config = getattr(base, "config", None)
    impl = getattr(config, "_attn_implementation", None)
    if impl == PER_SEQUENCE_SDPA:
        return True
    if impl != "sdpa" or not hasattr(base, "set_attn_implementation"):
        return False
    if getattr(config, "attn_logit_softcapping", None):
        warnings.warn(f"per_sequence_attention: {type(base).__name__} soft-caps its attention scores, which sdpa does "
                      "not apply; it keeps its attention.", stacklevel=3)
        return False
    register()
    base.set_attn_implementation(PER_SEQUENCE_SDPA)
    return True
