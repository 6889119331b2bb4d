"""Token-level building blocks of the policy losses, as pure tensor functions: masked reductions over (B, T)
completion tokens (``mask`` 1.0 on completion tokens, 0.0 on padding; bool masks are accepted) and logit utilities
computed in chunks (entropy, log-softmax at the sampled tokens, the top-entropy token mask).

Nothing here touches a model.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch

__all__ = [
    "LossSum",
    "as_weights",
    "masked_sum",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "entropy_from_logits",
    "selective_log_softmax",
    "top_entropy_mask",
    "nanstd",
]

_WHITEN_EPS = 1e-8  # added to the variance in masked_whiten


class LossSum(NamedTuple):
    """A loss as its sum over the items of a micro-batch (tokens, sequences, pairs or examples) and their count.

    Losses leave the normalisation to the trainer: ``BaseTrainer.reduce_loss`` turns ``total`` into this
    micro-batch's share of the optimizer step's mean, across gradient accumulation and processes.
    """

    total: torch.Tensor
    count: int | torch.Tensor

    @property
    def mean(self) -> torch.Tensor:
        """The loss of this micro-batch alone."""
        return self.total / self.count


def as_weights(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Mask as a floating tensor in ``like``'s dtype (bool / int masks are converted)."""
    dtype = like.dtype if like.is_floating_point() else torch.float32
    return mask.to(dtype=dtype)


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: Optional[int] = None) -> torch.Tensor:
    """Masked sum — sum_i mask_i * x_i (a plain weighted sum; no paper).

    ``dim=None`` reduces over every element; otherwise over ``dim`` only. Positions with
    ``mask == 0`` contribute exactly zero even when ``x`` holds ``inf``/``nan`` there.
    """
    w = as_weights(mask, x)
    xw = x * w
    xw = torch.where(w != 0, xw, torch.zeros_like(xw))
    return xw.sum() if dim is None else xw.sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: Optional[int] = None) -> torch.Tensor:
    """Masked mean — sum_i mask_i x_i / sum_i mask_i (a weighted average; no paper).

    ``dim=None`` averages over every element. Where the mask sums to zero the result is 0
    (the denominator is replaced by 1) instead of NaN.
    """
    w = as_weights(mask, x)
    num = masked_sum(x, w, dim)
    den = w.sum() if dim is None else w.sum(dim=dim)
    den = torch.where(den == 0, torch.ones_like(den), den)
    return num / den


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Masked variance over all active elements — sum mask (x - mean)^2 / (n - 1) when unbiased.

    ``n`` is the number of active elements (sum of the mask). With ``unbiased=True`` and ``n < 2``
    a ``ValueError`` is raised, as Bessel's correction is undefined.
    """
    w = as_weights(mask, x)
    mean = masked_mean(x, w)
    var = masked_mean((x - mean) ** 2, w)
    if unbiased:
        n = w.sum()
        if n < 2:
            raise ValueError(f"masked_var(unbiased=True) needs at least 2 active elements, got {float(n)}")
        var = var * (n / (n - 1))
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Masked whitening — (x - mean) / sqrt(var + 1e-8), as used for PPO advantage normalisation
    (Schulman et al. 2017, 'Proximal Policy Optimization Algorithms', Sec. 5 / baselines practice).

    Mean and *unbiased* variance (Bessel-corrected, like PPO implementations) are taken over the
    active elements only. With ``shift_mean=False`` the mean is added back after scaling, so only
    the scale changes. Padded positions are returned transformed too; mask them downstream.
    """
    w = as_weights(mask, x)
    mean = masked_mean(x, w)
    var = masked_var(x, w, unbiased=True)
    out = (x - mean) * torch.rsqrt(var + _WHITEN_EPS)
    if not shift_mean:
        out = out + mean
    return out


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def entropy_from_logits(logits: torch.Tensor, chunk_size: int = 128) -> torch.Tensor:
    """Categorical entropy — Shannon 1948, 'A Mathematical Theory of Communication', Sec. 6:
    H = -sum_v p_v log p_v with p = softmax(logits).

    ``logits`` is (..., V); returns (...). Rows are processed ``chunk_size`` at a time so only a
    (chunk_size, V) log-softmax is live at once. Half/bfloat16 inputs are computed in float32
    and the result is float32; float32/float64 keep their dtype. Vocabulary entries with
    probability 0 (logit -inf) contribute 0.
    """
    V = logits.shape[-1]
    lead = logits.shape[:-1]
    flat = logits.reshape(-1, V)
    cdt = _compute_dtype(logits.dtype)
    out = torch.empty(flat.shape[0], dtype=cdt, device=logits.device)
    for start in range(0, flat.shape[0], max(1, int(chunk_size))):
        chunk = flat[start : start + chunk_size].to(cdt)
        logp = torch.log_softmax(chunk, dim=-1)
        p = torch.exp(logp)
        plogp = p * torch.where(p > 0, logp, torch.zeros_like(logp))
        out[start : start + chunk.shape[0]] = -plogp.sum(dim=-1)
    return out.reshape(lead)


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor, chunk_size: int = 128) -> torch.Tensor:
    """Log-probability of chosen tokens — log softmax(z)_i = z_i - logsumexp(z) (Bridle 1990,
    'Probabilistic Interpretation of Feedforward Classification Network Outputs', softmax).

    ``logits`` (..., V), ``index`` (...) integer token ids (no ignore value: replace -100 before
    calling). Returns (...) = ``log_softmax(logits, -1).gather(-1, index)`` without materialising
    the full log-softmax: rows are processed ``chunk_size`` at a time, taking a logsumexp and
    gathering one logit per row. Half/bfloat16 inputs are computed in float32 and the result is
    float32; float32/float64 keep their dtype. Differentiable.
    """
    V = logits.shape[-1]
    if index.shape != logits.shape[:-1]:
        raise ValueError(f"index shape {tuple(index.shape)} must equal logits.shape[:-1] {tuple(logits.shape[:-1])}")
    flat = logits.reshape(-1, V)
    idx = index.reshape(-1, 1).long()
    cdt = _compute_dtype(logits.dtype)
    pieces = []
    step = max(1, int(chunk_size))
    for start in range(0, flat.shape[0], step):
        chunk = flat[start : start + step].to(cdt)
        picked = chunk.gather(-1, idx[start : start + step]).squeeze(-1)
        pieces.append(picked - torch.logsumexp(chunk, dim=-1))
    if not pieces:
        return torch.empty(index.shape, dtype=cdt, device=logits.device)
    return torch.cat(pieces).reshape(index.shape)


def top_entropy_mask(
    entropies: torch.Tensor,
    mask: torch.Tensor,
    quantile: float,
    *,
    reference_entropies: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """High-entropy ("forking") token mask — Wang et al. 2025, 'Beyond the 80/20 Rule:
    High-Entropy Minority Tokens Drive Effective Reinforcement Learning for LLM Reasoning',
    Sec. 5 (policy gradient restricted to the top-entropy tokens).

    The threshold tau is the ``quantile`` (in [0, 1]) of the entropies of the active tokens,
    with linear interpolation between order statistics (``torch.quantile``'s default; e.g.
    ``quantile=0.8`` keeps roughly the top 20 %). A token is kept when it is active and its
    entropy is >= tau; ``quantile=0`` keeps every active token. ``reference_entropies`` (1-D),
    when given, is the population the quantile is taken from instead (e.g. active entropies
    gathered from all processes). Returns a (B, T) mask in ``mask``'s dtype (bool stays bool).
    """
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {quantile}")
    active = mask.bool()
    pop = entropies.detach()[active] if reference_entropies is None else reference_entropies.detach().reshape(-1)
    pop = pop.float()
    if pop.numel() == 0:
        keep = torch.zeros_like(active)
    else:
        s, _ = torch.sort(pop)
        pos = quantile * (s.numel() - 1)
        lo = int(math.floor(pos))
        hi = min(lo + 1, s.numel() - 1)
        tau = s[lo] + (pos - lo) * (s[hi] - s[lo])
        keep = active & (entropies.detach().float() >= tau)
    return keep if mask.dtype == torch.bool else keep.to(mask.dtype)


def nanstd(x: torch.Tensor) -> torch.Tensor:
    """Unbiased standard deviation of the non-NaN entries (NaN if fewer than 2)."""
    x = x[~torch.isnan(x)]
    return x.std() if x.numel() > 1 else torch.tensor(float("nan"))
