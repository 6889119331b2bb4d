"""The log-probs of completion tokens: one path from model rows to per-token and per-sequence log-probs.

:func:`head_logps` is the one place the trainers run the output head for log-probs: fused with the log-softmax and
chunked over tokens where the head allows (:mod:`posttrain.models.fused_head`: no (tokens, vocabulary) logits in
forward or backward), else restricted to the positions that carry a target
(:func:`~posttrain.models.select_head_positions`). :func:`completion_head` selects the positions that predict a
completion token; on top of it, :func:`completion_logps` returns :class:`SequenceLogps` (per-token log-probs,
per-sequence sums and counts, optional token statistics; the offline preference trainers) and :func:`token_logps`
(B, T) log-probs at a temperature with entropies (the online trainers). Rows come from
:func:`~posttrain.data.preference.build_rows`, padded or padding-free.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..losses.tokens import entropy_from_logits, selective_log_softmax
from ..models import select_head_positions
from ..models.fused_head import STATS, fused_head, fused_head_supported


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
    head projects only those hidden states (:func:`~posttrain.models.select_head_positions`). For the callers that
    need the logits themselves (GKD's two distributions, evaluation outputs); log-probs come from :func:`head_logps`."""
    with select_head_positions(model, positions):
        return model(**inputs, use_cache=False).logits[0]


def head_logps(model, inputs: Mapping[str, torch.Tensor], positions: torch.Tensor, targets: torch.Tensor, *,
               temperature: float = 1.0, stats: tuple[str, ...] = (), fused: bool | None = None
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Log-probs (N,) of ``targets`` under ``softmax(logits / temperature)`` of ``model`` on ``inputs`` at the N True
    entries of ``positions`` (R, L), row-major, in float32, and the per-token statistics ``stats`` (names of
    :data:`posttrain.models.fused_head.STATS`: entropy, mean logit, top-1 hit, ``log sum p^2``; detached).

    The one place every trainer runs its output head for log-probs. Where the head allows it
    (:func:`~posttrain.models.fused_head.fused_head_supported`; ``fused=None``), the head is fused with the
    log-softmax and runs in chunks of tokens, so no (N, V) logits exist in forward or backward; otherwise the head
    projects the N positions and the log-probs are taken chunk by chunk from those logits."""
    if fused is None:
        fused = fused_head_supported(model)
    if fused:
        with fused_head(model, positions, targets, temperature=temperature, stats=stats):
            out = model(**inputs, use_cache=False).logits[0]
        return out[:, 0], {name: out[:, j + 1] for j, name in enumerate(stats)}
    logits = head_logits(model, inputs, positions)
    if temperature != 1.0:
        logits = logits / temperature
    return selective_log_softmax(logits, targets), logit_stats(logits.detach(), targets, stats)


def logit_stats(logits: torch.Tensor, targets: torch.Tensor, stats: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The statistics of :func:`head_logps` from (N, V) logits (the unfused path), float32."""
    out = {}
    for name in stats:
        if name == "entropy":
            out[name] = entropy_from_logits(logits).float()
        elif name == "mean_logit":
            out[name] = logits.float().mean(-1)
        elif name == "top1":
            out[name] = (logits.argmax(dim=-1) == targets).float()
        elif name == "log_sum_sq_probs":
            from ..losses.preference import log_sum_squared_probs

            out[name] = log_sum_squared_probs(logits)
        else:
            raise ValueError(f"Unknown head statistic {name!r}; valid: {', '.join(STATS)}.")
    return out


@dataclass
class CompletionHead:
    """The output head run on the positions that predict a completion token (:func:`completion_head`).

    ``logps`` (N,) the log-probs of the completion tokens and ``stats`` their requested statistics, in the order of
    the rows' tokens (row-major); ``targets`` (N,) the tokens; ``token_seq`` (N,) the sequence of each, ``order`` the
    permutation that groups them by sequence when bin-packed rows interleave sequences (else None; ``token_seq`` is
    already in that order); ``num_rows`` the number of sequences; ``nxt`` (R, L-1) the rows' positions whose next
    token is a completion token."""

    logps: torch.Tensor
    stats: dict[str, torch.Tensor]
    targets: torch.Tensor
    token_seq: torch.Tensor
    order: torch.Tensor | None
    num_rows: int
    nxt: torch.Tensor


def completion_head(model, rows: Mapping[str, torch.Tensor], *, temperature: float = 1.0,
                    stats: tuple[str, ...] = (), fused: bool | None = None) -> CompletionHead:
    """Run ``model`` on ``rows`` (from :func:`~posttrain.data.preference.build_rows`, padded or padding-free, plus a
    vision-language model's image inputs: every key not in :data:`ROW_KEYS`) and take the log-probs of the
    completion tokens at the positions that predict them (:func:`head_logps`), so the (R, L, V) logits are never
    built. Every log-prob of the trainers starts here."""
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
    logps, extra = head_logps(model, model_inputs, head_mask, targets, temperature=temperature, stats=stats,
                              fused=fused)
    return CompletionHead(logps, extra, targets, token_seq, order, num_rows, nxt)


def completion_logps(model, rows: Mapping[str, torch.Tensor], *, with_log_sum_sq_probs: bool = False,
                     with_token_stats: bool = False, fused: bool | None = None) -> SequenceLogps:
    """Per-sequence completion log-probs of ``rows`` under ``model`` (the offline trainers' layout), from
    :func:`completion_head`: neither the (R, L, V) logits nor a full-vocabulary ``log_softmax`` tensor is ever
    materialised (nor, where the head is fused, any (N, V) logits)."""
    stats = ("mean_logit",) + (("entropy", "top1") if with_token_stats else ()) + \
        (("log_sum_sq_probs",) if with_log_sum_sq_probs else ())
    head = completion_head(model, rows, stats=stats, fused=fused)
    token_logps, order, token_seq, num_rows = head.logps, head.order, head.token_seq, head.num_rows
    token_mean_logit = head.stats["mean_logit"]
    entropy, lssp = head.stats.get("entropy"), head.stats.get("log_sum_sq_probs")
    top1 = head.stats["top1"].bool() if with_token_stats else None
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


def token_logps(model, rows: Mapping[str, torch.Tensor], *, temperature: float = 1.0, with_entropy: bool = False,
                fused: bool | None = None):
    """``(logps, mask, entropies)`` of padded ``rows`` (the online trainers' layout): (B, T) log-probs of the
    completion tokens under ``logits / temperature``, their 0/1 mask, and (B, T) detached entropies when asked.
    From :func:`completion_head`."""
    head = completion_head(model, rows, temperature=temperature, stats=("entropy",) if with_entropy else (),
                           fused=fused)
    logps, mask = completion_layout(head.logps, head.nxt)
    entropies = completion_layout(head.stats["entropy"], head.nxt)[0] if with_entropy else None
    return logps, mask, entropies


__all__ = ["SequenceLogps", "sequence_sums", "ROW_KEYS", "head_logits", "head_logps", "logit_stats", "CompletionHead",
           "completion_head", "completion_logps", "completion_layout", "token_logps"]
