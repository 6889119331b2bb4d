"""Shared pieces of the preference losses (DPO, CPO/ORPO, KTO/BCO): output tuples, input checks and numerics.

Pure tensor functions; nothing here touches a model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = ["PreferenceLossOutput", "unknown_name", "check_1d", "capped_exp", "log1mexp", "cross_entropy_on_margin"]


class PreferenceLossOutput(NamedTuple):
    """Per-pair losses and detached implicit rewards, all of shape ``(B,)``."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def unknown_name(kind: str, name: object, valid: Sequence[str]) -> ValueError:
    return ValueError(f"Unknown {kind} {name!r}; valid names are: {', '.join(valid)}.")


def check_1d(**tensors: torch.Tensor | None) -> None:
    shape = None
    for name, t in tensors.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor) or t.dim() != 1:
            got = getattr(t, "shape", type(t))
            raise ValueError(f"{name} must be a 1-D tensor of per-sequence values, got {got}")
        if shape is None:
            shape = t.shape
        elif t.shape != shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)}")


def capped_exp(x: torch.Tensor) -> torch.Tensor:
    """``exp(x)`` with the exponent capped so the result stays finite in ``x.dtype``."""
    cap = math.log(torch.finfo(x.dtype).max) - 1.0
    return torch.exp(torch.clamp(x, max=cap))


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, accurate near 0 and for very negative ``x``.

    Uses ``log(-expm1(x))`` for ``x > -log 2`` and ``log1p(-exp(x))`` otherwise
    (Maechler's split). Each branch is evaluated only on inputs that are safe
    for it, so the backward pass never sees ``0 * inf``. Inputs are clamped to
    ``<= -tiny`` so ``x == 0`` (probability exactly one) stays finite.
    """
    x = torch.clamp(x, max=-torch.finfo(x.dtype).tiny)
    ln2 = math.log(2.0)
    near_zero = x > -ln2
    a = torch.log(-torch.expm1(torch.where(near_zero, x, torch.full_like(x, -ln2))))
    b = torch.log1p(-torch.exp(torch.where(near_zero, torch.full_like(x, -ln2), x)))
    return torch.where(near_zero, a, b)


def cross_entropy_on_margin(z: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Binary cross-entropy of ``sigmoid(z)`` against the soft label ``1 - label_smoothing``."""
    return -F.logsigmoid(z) * (1.0 - label_smoothing) - F.logsigmoid(-z) * label_smoothing
