"""The log-probs of completion tokens: one path from model rows to per-token and per-sequence log-probs.

:func:`completion_head` runs a model with its output head restricted to the positions that predict a completion
token (:func:`~posttrain.models.select_head_positions`), so no (R, L, V) logits are ever built; it is the one place
the offline and online trainers run the head. On top of it, :func:`completion_logps` returns
:class:`SequenceLogps` (per-token log-probs, per-sequence sums and counts, optional token statistics; the offline
preference trainers) and :func:`token_logps` (B, T) log-probs at a temperature with entropies (the online
trainers). Rows come from :func:`~posttrain.data.preference.build_rows`, padded or padding-free.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..losses.tokens import entropy_from_logits, selective_log_softmax
from ..models import select_head_positions


@dataclass
class SequenceLogps:
    """Per-sequence log-probs of the completion tokens of R rows.

    ``sum`` (R,) summed log-probs (with grad when the forward had it); ``count`` (R,) completion tokens;
    ``mean_logits`` (R,) detached mean of the logits over completion tokens and vocabulary;
    ``token_logps`` (N,) and ``token_seq`` (N,) the per-token log-probs and their row index (row-major);
    ``log_sum_sq_probs`` (N,) ``log Σ_v p_v²`` per token when requested (WPO).
    """

    sum: torch.Tensor
    count: torch.Tensor
    mean_logits: torch.Tensor
    token_logps: torch.Tensor
    token_seq: torch.Tensor
    log_sum_sq_probs: torch.Tensor | None = None
    token_entropy: torch.Tensor | None = None
    """(N,) detached entropy of the policy's next-token distribution at each completion token (``with_token_stats``)."""
    token_top1: torch.Tensor | None = None
    """(N,) whether each completion token is the argmax of its logits (``with_token_stats``)."""

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / self.count.clamp(min=1)

    def per_token(self, values: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``values`` (default: ``token_logps``) as an (R, T) matrix and its 0/1 mask."""
        values = self.token_logps if values is None else values
        rows = self.sum.shape[0]
        counts = torch.bincount(self.token_seq, minlength=rows)
        width = int(counts.max()) if counts.numel() else 0
        starts = torch.cumsum(counts, 0) - counts
        pos = torch.arange(self.token_seq.numel(), device=values.device) - starts[self.token_seq]
        out = values.new_zeros(rows, width)
        out = out.index_put((self.token_seq, pos), values)
        mask = torch.zeros(rows, width, dtype=torch.bool, device=values.device)
        mask[self.token_seq, pos] = True
        return out, mask

    def select(self, rows: slice) -> torch.Tensor:
        """Token mask (N,) of the tokens belonging to ``rows``."""
        start, stop = rows.start or 0, rows.stop if rows.stop is not None else self.sum.shape[0]
        return (self.token_seq >= start) & (self.token_seq < stop)


def sequence_sums(values: torch.Tensor, token_seq: torch.Tensor, num_rows: int) -> torch.Tensor:
    """Per-sequence sums (num_rows,) of the per-token ``values`` (N,) whose sequence index is ``token_seq``.

    Accumulated in float64 (then cast back): ``index_add`` adds one token after another, so a float32 sum of a
    thousand log-probs near -1 drifts by ~1e-3, which KTO's KL estimate and DPO's implicit rewards (differences of
    two such sums) would carry. MPS has no float64 and keeps float32.
    """
    acc = torch.float32 if values.device.type == "mps" else torch.float64
    return values.new_zeros(num_rows, dtype=acc).index_add(0, token_seq, values.to(acc)).to(values.dtype)


ROW_KEYS = ("input_ids", "attention_mask", "position_ids", "completion_mask", "sequence_index")
"""The keys of :func:`build_rows`; any other key of a row batch is an input of the model (images)."""


def head_logits(model, inputs: Mapping[str, torch.Tensor], positions: torch.Tensor) -> torch.Tensor:
    """(N, V) logits of ``model`` on ``inputs`` at the N True entries of ``positions`` (R, L), row-major: the output
    head projects only those hidden states (:func:`~posttrain.models.select_head_positions`). The one place every
    trainer (SFT, GKD, the preference and online trainers) runs the output head."""
    with select_head_positions(model, positions):
        return model(**inputs, use_cache=False).logits[0]


@dataclass
class CompletionHead:
    """The output head run on the positions that predict a completion token (:func:`completion_head`).

    ``logits`` (N, V) in the order of the rows' tokens (row-major); ``targets`` (N,) the tokens they predict;
    ``token_seq`` (N,) the sequence of each, ``order`` the permutation that groups them by sequence when bin-packed
    rows interleave sequences (else None; ``token_seq`` is already in that order); ``num_rows`` the number of
    sequences; ``nxt`` (R, L-1) the rows' positions whose next token is a completion token."""

    logits: torch.Tensor
    targets: torch.Tensor
    token_seq: torch.Tensor
    order: torch.Tensor | None
    num_rows: int
    nxt: torch.Tensor


def completion_head(model, rows: Mapping[str, torch.Tensor]) -> CompletionHead:
    """Run ``model`` on ``rows`` (from :func:`~posttrain.data.preference.build_rows`, padded or padding-free, plus a
    vision-language model's image inputs: every key not in :data:`ROW_KEYS`) with its output head restricted to the
    positions whose next token is a completion token (:func:`~posttrain.models.select_head_positions`), so the
    (R, L, V) logits are never built. Every log-prob of the trainers starts here: the one place the head runs."""
    input_ids = rows["input_ids"]
    cmask = rows["completion_mask"].bool()
    position_ids = rows.get("position_ids")
    # position t predicts token t+1: select t where t+1 is a completion token of the same sequence
    nxt = cmask[:, 1:]
    if position_ids is not None:
        nxt = nxt & (position_ids[:, 1:] != 0)
    head_mask = torch.zeros_like(cmask)
    head_mask[:, :-1] = nxt
    targets = input_ids[:, 1:][nxt]
    order = None
    if position_ids is not None:
        seq_all = rows["sequence_index"].reshape(-1)
        token_seq = seq_all[head_mask.reshape(-1)]
        num_rows = int(seq_all.max().item()) + 1 if seq_all.numel() else 0
        if token_seq.numel() > 1 and bool((token_seq[1:] < token_seq[:-1]).any()):  # bin-packed rows: reorder
            order = torch.argsort(token_seq, stable=True)                             # the tokens by sequence
            token_seq = token_seq[order]
        model_inputs = {"input_ids": input_ids, "position_ids": position_ids}
    else:
        token_seq = head_mask.nonzero(as_tuple=True)[0]
        num_rows = input_ids.shape[0]
        model_inputs = {"input_ids": input_ids, "attention_mask": rows["attention_mask"]}
    # a vision-language model's image inputs (pixel_values, image_sizes, token_type_ids, ...): every other key
    model_inputs.update({k: v for k, v in rows.items() if k not in ROW_KEYS})
    return CompletionHead(head_logits(model, model_inputs, head_mask), targets, token_seq, order, num_rows, nxt)


def completion_logps(model, rows: Mapping[str, torch.Tensor], *, with_log_sum_sq_probs: bool = False,
                     with_token_stats: bool = False) -> SequenceLogps:
    """Per-sequence completion log-probs of ``rows`` under ``model`` (the offline trainers' layout).

    The log-probs are ``logit[target] - logsumexp(logits)`` in float32 over the head positions of
    :func:`completion_head`, so neither the (R, L, V) logits nor a full-vocabulary ``log_softmax`` tensor is ever
    materialised.
    """
    head = completion_head(model, rows)
    logits, targets, order = head.logits, head.targets, head.order
    token_seq, num_rows = head.token_seq, head.num_rows
    logits32 = logits.float()
    lse = torch.logsumexp(logits32, dim=-1)
    token_logps = logits32.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse
    token_mean_logit = logits32.detach().mean(-1)
    entropy = top1 = None
    if with_token_stats:  # the metrics TRL's DPO/KTO log: entropy and whether the target is the top-1 token
        entropy = entropy_from_logits(logits.detach())
        top1 = logits.detach().argmax(dim=-1) == targets
    lssp = None
    if with_log_sum_sq_probs:
        from ..losses.preference import log_sum_squared_probs

        lssp = log_sum_squared_probs(logits.detach())
    del logits32, logits, head
    if order is not None:  # tokens grouped by sequence, in sequence order (SequenceLogps.per_token relies on it)
        token_logps, token_mean_logit = token_logps[order], token_mean_logit[order]
        lssp, entropy, top1 = (x[order] if x is not None else None for x in (lssp, entropy, top1))
    sums = sequence_sums(token_logps, token_seq, num_rows)
    counts = torch.bincount(token_seq, minlength=num_rows).to(token_logps.dtype)
    mean_logits = sequence_sums(token_mean_logit, token_seq, num_rows) / counts.clamp(min=1)
    return SequenceLogps(sums, counts, mean_logits, token_logps, token_seq, lssp, entropy, top1)


def completion_layout(flat: torch.Tensor, nxt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Values at the positions that predict completion tokens (``flat``: one per True of ``nxt`` (B, L-1), in
    row-major order) laid out as (B, T), row i's first entries, T the longest completion; and the (B, T) mask."""
    counts = nxt.sum(dim=1)
    width = int(counts.max()) if counts.numel() else 0
    rows = nxt.nonzero(as_tuple=True)[0]
    pos = torch.arange(rows.numel(), device=rows.device) - (torch.cumsum(counts, 0) - counts)[rows]
    out = flat.new_zeros(nxt.shape[0], width).index_put((rows, pos), flat)
    return out, torch.arange(width, device=counts.device).unsqueeze(0) < counts.unsqueeze(1)


def token_logps(model, rows: Mapping[str, torch.Tensor], *, temperature: float = 1.0, with_entropy: bool = False):
    """``(logps, mask, entropies)`` of padded ``rows`` (the online trainers' layout): (B, T) log-probs of the
    completion tokens under ``logits / temperature`` (chunked log-softmax), their 0/1 mask, and (B, T) detached
    entropies when asked. The logits come from :func:`completion_head`."""
    head = completion_head(model, rows)
    logits = head.logits
    if temperature != 1.0:
        logits = logits / temperature
    logps, mask = completion_layout(selective_log_softmax(logits, head.targets), head.nxt)
    entropies = None
    if with_entropy:
        with torch.no_grad():
            entropies = completion_layout(entropy_from_logits(logits.detach()), head.nxt)[0]
    return logps, mask, entropies


__all__ = ["SequenceLogps", "sequence_sums", "ROW_KEYS", "head_logits", "CompletionHead", "completion_head", "completion_logps",
           "completion_layout", "token_logps"]
