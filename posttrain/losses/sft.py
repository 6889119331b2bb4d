"""Token-level losses and metrics for supervised fine-tuning (pure tensor functions).

All functions take ``logits`` of shape (N, V) and integer ``targets`` of shape (N,) for the N positions
that carry a label; selecting those positions (and shifting labels) is the trainer's job.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SFT_LOSS_TYPES = ("nll", "chunked_nll", "dft")


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood per token, -log softmax(logits)[target], computed in fp32."""
    return F.cross_entropy(logits.float(), targets, reduction="none")


def token_dft(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dynamic Fine-Tuning loss per token — Wu et al. 2025, 'On the Generalization of SFT', Eq. 8: -sg(p_t) log p_t."""
    logp = -token_nll(logits, targets)
    return -(logp.detach().exp() * logp)


def sft_loss_from_logps(logps: torch.Tensor, loss_type: str = "nll") -> torch.Tensor:
    """Per-token SFT loss from the log-probs of the targets (N,): ``-log p_t`` (``nll``/``chunked_nll``), or DFT's
    ``-sg(p_t) log p_t`` (Wu et al. 2025, 'On the Generalization of SFT', Eq. 8). The same values as
    :func:`sft_token_loss` on the logits those log-probs come from."""
    if loss_type in ("nll", "chunked_nll"):
        return -logps
    if loss_type == "dft":
        return -(logps.detach().exp() * logps)
    raise ValueError(f"Unknown SFT loss_type {loss_type!r}; use one of {SFT_LOSS_TYPES}.")


def sft_token_loss(logits: torch.Tensor, targets: torch.Tensor, loss_type: str = "nll") -> torch.Tensor:
    """Per-token SFT loss for ``loss_type`` in ``nll``/``chunked_nll`` (same math) or ``dft``."""
    if loss_type in ("nll", "chunked_nll"):
        return token_nll(logits, targets)
    if loss_type == "dft":
        return token_dft(logits, targets)
    raise ValueError(f"Unknown SFT loss_type {loss_type!r}; use one of {SFT_LOSS_TYPES}.")


@torch.no_grad()
def token_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(number of positions whose argmax equals the target, number of positions)."""
    return (logits.argmax(dim=-1) == targets).sum(), targets.numel()
