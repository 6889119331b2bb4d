"""DPO-family preference losses as pure tensor functions (the CPO/ORPO losses are in :mod:`.cpo`, KTO/BCO in
:mod:`.kto`, their shared checks and numerics in :mod:`.common`).

Nothing in these modules touches a model. Every loss takes *per-sequence*
log-probabilities -- 1-D float tensors of shape ``(B,)`` that the caller has
already reduced over the completion tokens -- and returns per-example losses
plus detached reward diagnostics. Whether a loss wants the token log-probs
*summed* or *length-averaged* is part of its contract and is stated in each
docstring; the reduction itself is the caller's job.

Loss-type names, config-field names and the meaning of the returned rewards
follow Hugging Face TRL (``DPOConfig``, ``CPOConfig``, ``ORPOConfig``,
``KTOConfig``, ``BCOConfig``) so a trainer built on top can log the same
metrics (``rewards/chosen``, ``rewards/rejected``, ``log_odds_ratio``, ...).

Summary of what each entry point expects from the caller
--------------------------------------------------------
=====================  =====================================================
``dpo_loss``           summed logps (policy and reference), plus the
                       completion lengths for ``ipo``/``sigmoid_norm``
                       (per-token scores) and ``sft`` (token-mean NLL).
``cpo_loss``           summed logps for ``sigmoid``/``hinge``/``ipo``;
                       length-averaged for ``simpo``/``alphapo``.
``orpo_loss``          length-averaged logps (must be <= 0).
``kto_loss``           summed logps, one completion per example + labels.
``bco_loss``           summed logps, one completion per example + labels.
=====================  =====================================================

Token-level helpers (``ld_dpo_logps``, ``wpo_weights`` ...) build the
per-sequence inputs from per-token tensors of shape ``(B, T)`` together with
a 0/1 completion mask of the same shape.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .common import PreferenceLossOutput, capped_exp, check_1d, cross_entropy_on_margin, unknown_name

__all__ = [
    "DPO_LOSS_TYPES",
    "F_DIVERGENCE_TYPES",
    "dpo_loss",
    "check_f_divergence",
    "dpo_implicit_rewards",
    "ld_dpo_logps",
    "ld_dpo_pair_logps",
    "log_sum_squared_probs",
    "wpo_log_weights",
    "wpo_weights",
]

DPO_LOSS_TYPES: tuple[str, ...] = (
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_pair",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
)
"""Valid ``loss_type`` values for :func:`dpo_loss`.

``aot_unpaired`` is the name newer TRL releases use for ``aot_pair``; both are
accepted and compute the same thing."""

F_DIVERGENCE_TYPES: tuple[str, ...] = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")

# Loss types whose value is a function of the f-divergence scores f'(pi/pi_ref) of the two completions (their
# margin, or for ipo/sigmoid_norm their per-token margin). The others look at the log-ratios themselves, so an
# f-divergence other than reverse KL is refused for them (the f-DPO reparameterisation leaves a beta*log Z(x) term
# that only cancels in a chosen-minus-rejected difference). ``sft`` ignores both and may be combined with either.
_MARGIN_LOSS_TYPES = frozenset({"sigmoid", "hinge", "ipo", "exo_pair", "robust", "discopop", "sigmoid_norm"})
_PER_TOKEN_LOSS_TYPES = frozenset({"ipo", "sigmoid_norm"})

_EXO_DEFAULT_EPSILON = 1e-3





# ---------------------------------------------------------------------------
# DPO family
# ---------------------------------------------------------------------------


def dpo_implicit_rewards(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None,
    ref_rejected_logps: torch.Tensor | None,
    *,
    beta: float = 0.1,
    reference_free: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Implicit DPO rewards β·log(π/π_ref) — Rafailov et al. 2023, 'Direct Preference Optimization', Eq. 5.

    Returns detached ``(chosen_rewards, rejected_rewards)``. With
    ``reference_free=True`` the reference is the uniform "model" and the
    rewards are ``beta * logps``. A trainer using ``loss_type="bco_pair"``
    calls this first to update its :class:`RunningMean` before calling
    :func:`dpo_loss` (see there).
    """
    if reference_free:
        return (beta * chosen_logps).detach(), (beta * rejected_logps).detach()
    if ref_chosen_logps is None or ref_rejected_logps is None:
        raise ValueError("reference log-probabilities are required unless reference_free=True")
    return (
        (beta * (chosen_logps - ref_chosen_logps)).detach(),
        (beta * (rejected_logps - ref_rejected_logps)).detach(),
    )


def _f_divergence_scores(logratios: torch.Tensor, f_divergence_type: str, alpha: float) -> torch.Tensor:
    """Per-completion score ``f'(u)`` with ``u = pi/pi_ref = exp(logratios)`` (f-DPO, Wang et al. 2023, Thm. 1), up
    to the additive constant that cancels in a margin (chosen as TRL does, which matters only for the per-token
    margins of ``ipo``/``sigmoid_norm``)."""
    if f_divergence_type == "reverse_kl":  # f(u) = u log u: f'(u) = log u + 1
        return logratios
    if f_divergence_type == "forward_kl":  # f(u) = -log u: f'(u) = -1/u
        return 1.0 - capped_exp(-logratios)
    if f_divergence_type == "js_divergence":  # f'(u) = log(2u / (1 + u))
        return math.log(2.0) + F.logsigmoid(logratios)
    if f_divergence_type == "alpha_divergence":
        # f'(u) = (u^(a-1) - 1) / (a - 1) with a = f_alpha_divergence_coef (TRL's convention); the paper's alpha is 1 - a
        # (its f'(u) = (1 - u^-alpha) / alpha). a -> 1 is reverse KL, a = 0 forward KL, a = 0.5 the same in both.
        if abs(alpha - 1.0) < 1e-6:
            return logratios
        return (capped_exp((alpha - 1.0) * logratios) - 1.0) / (alpha - 1.0)
    raise unknown_name("f_divergence_type", f_divergence_type, F_DIVERGENCE_TYPES)


def _single_dpo_loss(
    loss_type: str,
    *,
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    ref_margin: torch.Tensor,
    logits: torch.Tensor | None,
    token_logits: torch.Tensor | None,
    chosen_nll: torch.Tensor | None,
    beta: float,
    label_smoothing: float,
    bco_delta: float | torch.Tensor | None,
    discopop_tau: float,
) -> torch.Tensor:
    ls = label_smoothing
    if loss_type == "sigmoid":
        # DPO (Rafailov et al. 2023, Eq. 7); ls > 0 is conservative DPO (Mitchell 2023).
        return cross_entropy_on_margin(beta * logits, ls)
    if loss_type == "robust":
        # Robust DPO (Chowdhury et al. 2024): unbiased loss under label flips with rate ls.
        if not 0.0 <= ls < 0.5:
            raise ValueError(f"loss_type='robust' needs 0 <= label_smoothing < 0.5, got {ls}")
        z = beta * logits
        return (-F.logsigmoid(z) * (1.0 - ls) + F.logsigmoid(-z) * ls) / (1.0 - 2.0 * ls)
    if loss_type == "exo_pair":
        # EXO pairwise (Ji et al. 2024, Eq. 16): KL(p_theta || p_label) with p_label = (1-eps, eps).
        eps = ls if ls > 0 else _EXO_DEFAULT_EPSILON
        if not 0.0 < eps < 1.0:
            raise ValueError(f"loss_type='exo_pair' needs 0 < label_smoothing < 1, got {ls}")
        z = beta * logits
        return torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-eps)) + torch.sigmoid(-z) * (
            F.logsigmoid(-z) - math.log(eps)
        )
    if loss_type == "hinge":
        # SLiC / RSO hinge; 1/beta is the margin.
        return torch.relu(1.0 - beta * logits)
    if loss_type == "ipo":
        # IPO (Azar et al. 2023, Eq. 17) on per-token scores; beta plays the role of tau.
        return (token_logits - 1.0 / (2.0 * beta)) ** 2
    if loss_type == "sigmoid_norm":
        # DPO on per-token scores (length-normalised DPO).
        return -F.logsigmoid(beta * token_logits)
    if loss_type == "discopop":
        # DiscoPOP (Chris Lu et al. 2024, Eq. 5): log-ratio modulated blend of logistic and exponential.
        z = beta * logits
        mix = torch.sigmoid(z / discopop_tau)
        return -F.logsigmoid(z) * (1.0 - mix) + torch.exp(-z) * mix
    if loss_type == "bco_pair":
        # BCO on pairs (Jung et al. 2024): chosen -> 1, rejected -> 0, rewards shifted by delta.
        if bco_delta is None:
            raise ValueError(
                "loss_type='bco_pair' needs bco_delta (the running mean of the rewards, see RunningMean)"
            )
        delta = torch.as_tensor(bco_delta, dtype=chosen_logratios.dtype, device=chosen_logratios.device).detach()
        rc = beta * chosen_logratios
        rr = beta * rejected_logratios
        return -F.logsigmoid(rc - delta) - F.logsigmoid(-(rr - delta))
    if loss_type == "sppo_hard":
        # SPPO (Wu et al. 2024, Eq. 4.7 of Alg. 1) with hard win probabilities 1 / 0.
        half = 0.5 / beta
        return (chosen_logratios - half) ** 2 + (rejected_logratios + half) ** 2
    if loss_type == "nca_pair":
        # NCA pairwise (Chen et al. 2024).
        rc = beta * chosen_logratios
        rr = beta * rejected_logratios
        return -F.logsigmoid(rc) - 0.5 * F.logsigmoid(-rc) - 0.5 * F.logsigmoid(-rr)
    if loss_type == "aot":
        # AOT paired (Melnyk et al. 2024): sorted policy margins must dominate sorted reference margins.
        policy_margin = chosen_logps - rejected_logps
        delta = torch.sort(policy_margin, dim=0).values - torch.sort(ref_margin, dim=0).values
        return cross_entropy_on_margin(beta * delta, ls)
    if loss_type in ("aot_pair", "aot_unpaired"):
        # AOT unpaired: sorted chosen log-ratios must dominate sorted rejected log-ratios.
        delta = torch.sort(chosen_logratios, dim=0).values - torch.sort(rejected_logratios, dim=0).values
        return cross_entropy_on_margin(beta * delta, ls)
    if loss_type == "apo_zero":
        # APO-zero (D'Oosterlinck et al. 2024, Eq. 7): raise chosen, lower rejected.
        return (1.0 - torch.sigmoid(beta * chosen_logratios)) + torch.sigmoid(beta * rejected_logratios)
    if loss_type == "apo_down":
        # APO-down (D'Oosterlinck et al. 2024, Eq. 8): lower both, rejected more.
        return torch.sigmoid(beta * chosen_logratios) + (
            1.0 - torch.sigmoid(beta * (chosen_logratios - rejected_logratios))
        )
    if loss_type == "sft":
        return chosen_nll
    raise unknown_name("loss_type", loss_type, DPO_LOSS_TYPES)


def dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None = None,
    ref_rejected_logps: torch.Tensor | None = None,
    *,
    beta: float = 0.1,
    loss_type: str | Sequence[str] = "sigmoid",
    loss_weights: Sequence[float] | None = None,
    label_smoothing: float = 0.0,
    f_divergence_type: str = "reverse_kl",
    f_alpha_divergence_coef: float = 0.5,
    reference_free: bool = False,
    bco_delta: float | torch.Tensor | None = None,
    discopop_tau: float = 0.05,
    weights: torch.Tensor | None = None,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
) -> PreferenceLossOutput:
    """DPO sigmoid loss and its variants — Rafailov et al. 2023, 'Direct Preference Optimization', Eq. 7.

    Inputs are per-sequence log-probabilities of shape ``(B,)``, **summed**
    over completion tokens, for the policy (``chosen_logps``,
    ``rejected_logps``) and the frozen reference (``ref_*``), and optionally
    the completions' token counts ``chosen_lengths``/``rejected_lengths``
    (``(B,)``), which ``ipo``, ``sigmoid_norm`` and ``sft`` use.

    Write ``h_w = chosen_logps - ref_chosen_logps``, ``h_l`` likewise, ``s =
    f'(exp(h))`` the f-divergence score of each side (``s = h`` for the default
    reverse KL), ``logits = s_w - s_l`` and the per-token margin ``m = s_w/n_w -
    s_l/n_l`` (``n`` the lengths; without lengths ``m = logits``, i.e. the
    caller passed length-averaged log-probs). Loss types (TRL names):

    * ``sigmoid`` -- ``-log σ(β·logits)``; with ``label_smoothing=ε`` the
      conservative DPO (cDPO) mixture ``-(1-ε) log σ(β·logits) - ε log σ(-β·logits)``.
    * ``hinge`` -- SLiC/RSO ``relu(1 - β·logits)``.
    * ``ipo`` -- IPO (Azar et al. 2023, Eq. 17) ``(m - 1/(2β))²``: per-token
      log-ratios, as the IPO authors and TRL use it.
    * ``sigmoid_norm`` -- DPO on the per-token margin, ``-log σ(β·m)``.
    * ``exo_pair`` -- pairwise EXO (Ji et al. 2024, Eq. 16),
      ``σ(z)(log σ(z) - log(1-ε)) + σ(-z)(log σ(-z) - log ε)`` with ``z = β·logits``;
      ``ε = label_smoothing``, or ``1e-3`` when it is 0.
    * ``nca_pair`` -- NCA (Chen et al. 2024)
      ``-log σ(βh_w) - ½ log σ(-βh_w) - ½ log σ(-βh_l)``.
    * ``robust`` -- Robust DPO (Chowdhury et al. 2024)
      ``((1-ε)(-log σ(z)) + ε log σ(-z)) / (1-2ε)``, ``ε = label_smoothing < 0.5``.
    * ``bco_pair`` -- BCO on pairs (Jung et al. 2024)
      ``-log σ(βh_w - δ) - log σ(-(βh_l - δ))`` with ``δ = bco_delta``.
    * ``sppo_hard`` -- SPPO with hard probabilities (Wu et al. 2024)
      ``(h_w - 1/(2β))² + (h_l + 1/(2β))²``.
    * ``aot`` -- AOT for paired data (Melnyk et al. 2024): sort the policy
      margins ``chosen_logps - rejected_logps`` and the reference margins
      independently over the batch, take ``Δ = sorted_policy - sorted_ref``
      and apply the (label-smoothed) sigmoid loss to ``β·Δ``.
    * ``aot_pair`` (alias ``aot_unpaired``) -- AOT for unpaired data: sort
      ``h_w`` and ``h_l`` independently, ``Δ = sorted(h_w) - sorted(h_l)``.
      Both AOT variants couple the examples of the batch (the i-th loss is
      not a function of the i-th pair alone).
    * ``apo_zero`` -- APO-zero (D'Oosterlinck et al. 2024, Eq. 7)
      ``1 - σ(βh_w) + σ(βh_l)``.
    * ``apo_down`` -- APO-down (Eq. 8) ``σ(βh_w) + 1 - σ(β(h_w - h_l))``.
    * ``discopop`` -- DiscoPOP (Lu et al. 2024, Eq. 5): with ``z = β·logits``
      and ``m = σ(z/τ)``, ``(1-m)(-log σ(z)) + m·exp(-z)``, ``τ = discopop_tau``.
    * ``sft`` -- the chosen completions' negative log-likelihood: with lengths
      the token mean over the batch, ``-Σ chosen_logps / Σ n_w`` (the same value
      for every pair), without them ``-chosen_logps``.

    f-divergences (f-DPO, Wang et al. 2023) set the score ``s = f'(u)``,
    ``u = π/π_ref``: ``reverse_kl`` (``log u``, standard DPO), ``forward_kl``
    (``1 - 1/u``), ``js_divergence`` (``log(2u/(1+u))``) and
    ``alpha_divergence`` (``(u^(a-1) - 1)/(a-1)``, ``a =
    f_alpha_divergence_coef``: TRL's convention, which is the paper's α-divergence
    with α = 1 - a; a → 1 is reverse KL, a = 0 forward KL). Only the margin
    types (``sigmoid``, ``sigmoid_norm``, ``hinge``, ``ipo``, ``exo_pair``,
    ``robust``, ``discopop``; ``sft`` alongside) accept another f-divergence
    than reverse KL: the reparameterisation's ``β log Z(x)`` cancels only in a
    chosen-minus-rejected difference, so the others raise ``ValueError``.

    Multiple loss types (TRL's ``loss_type=[...]`` with ``loss_weights``, e.g.
    MPO = ``["sigmoid", "bco_pair", "sft"]`` with ``[0.8, 0.2, 1.0]``): pass a
    list; the returned ``losses`` is ``Σ_k w_k · losses_k`` (weights default
    to 1). Rewards do not depend on the loss type.

    ``reference_free=True`` ignores the reference log-probs entirely (they
    may be ``None``): ``h = logps`` and the rewards become ``β·logps``.

    ``bco_pair`` needs ``bco_delta``: the trainer keeps a :class:`RunningMean`,
    calls ``running.update(torch.cat(dpo_implicit_rewards(...)).mean())``
    and passes ``bco_delta=running.mean`` (the current batch is included in
    the mean, as in TRL).

    ``weights`` (optional, ``(B,)``) multiplies the per-pair losses; pass
    :func:`wpo_weights` for WPO (TRL's ``use_weighting``). RPO (``rpo_alpha``)
    and LD-DPO (``ld_alpha``, see :func:`ld_dpo_pair_logps`) act on the
    log-probs / the final scalar and are the caller's job.

    Returns :class:`PreferenceLossOutput` ``(losses, chosen_rewards,
    rejected_rewards)``, each ``(B,)``; rewards are ``β·h`` and detached.
    Unknown ``loss_type`` / ``f_divergence_type`` raise ``ValueError``.
    """
    types = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    if not types:
        raise ValueError("loss_type must name at least one loss")
    for name in types:
        if name not in DPO_LOSS_TYPES:
            raise unknown_name("loss_type", name, DPO_LOSS_TYPES)
    if f_divergence_type not in F_DIVERGENCE_TYPES:
        raise unknown_name("f_divergence_type", f_divergence_type, F_DIVERGENCE_TYPES)
    check_f_divergence(types, f_divergence_type)
    if loss_weights is None:
        loss_weights = [1.0] * len(types)
    elif len(loss_weights) != len(types):
        raise ValueError(f"loss_weights has {len(loss_weights)} entries for {len(types)} loss types")
    if not reference_free and (ref_chosen_logps is None or ref_rejected_logps is None):
        raise ValueError("ref_chosen_logps and ref_rejected_logps are required unless reference_free=True")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if (chosen_lengths is None) != (rejected_lengths is None):
        raise ValueError("give both chosen_lengths and rejected_lengths, or neither")
    if "sigmoid_norm" in types and chosen_lengths is None:
        raise ValueError("loss_type='sigmoid_norm' needs chosen_lengths and rejected_lengths (completion token counts)")
    check_1d(
        chosen_logps=chosen_logps,
        rejected_logps=rejected_logps,
        ref_chosen_logps=None if reference_free else ref_chosen_logps,
        ref_rejected_logps=None if reference_free else ref_rejected_logps,
        weights=weights,
        chosen_lengths=chosen_lengths,
        rejected_lengths=rejected_lengths,
    )

    if reference_free:
        chosen_logratios, rejected_logratios = chosen_logps, rejected_logps
        ref_margin = torch.zeros_like(chosen_logps)
    else:
        chosen_logratios = chosen_logps - ref_chosen_logps
        rejected_logratios = rejected_logps - ref_rejected_logps
        ref_margin = ref_chosen_logps - ref_rejected_logps

    logits = token_logits = chosen_nll = None
    if any(t in _MARGIN_LOSS_TYPES for t in types):
        chosen_scores = _f_divergence_scores(chosen_logratios, f_divergence_type, f_alpha_divergence_coef)
        rejected_scores = _f_divergence_scores(rejected_logratios, f_divergence_type, f_alpha_divergence_coef)
        logits = chosen_scores - rejected_scores
        token_logits = logits
        if chosen_lengths is not None:
            token_logits = (chosen_scores / chosen_lengths.clamp(min=1)
                            - rejected_scores / rejected_lengths.clamp(min=1))
    if "sft" in types:
        chosen_nll = -chosen_logps
        if chosen_lengths is not None:
            chosen_nll = (-chosen_logps.sum() / chosen_lengths.sum().clamp(min=1)).expand_as(chosen_logps)

    total = None
    for name, w in zip(types, loss_weights):
        part = _single_dpo_loss(
            name,
            chosen_logps=chosen_logps,
            rejected_logps=rejected_logps,
            chosen_logratios=chosen_logratios,
            rejected_logratios=rejected_logratios,
            ref_margin=ref_margin,
            logits=logits,
            token_logits=token_logits,
            chosen_nll=chosen_nll,
            beta=beta,
            label_smoothing=label_smoothing,
            bco_delta=bco_delta,
            discopop_tau=discopop_tau,
        )
        if w != 1.0:
            part = part * w
        total = part if total is None else total + part
    if weights is not None:
        total = total * weights

    return PreferenceLossOutput(
        total,
        (beta * chosen_logratios).detach(),
        (beta * rejected_logratios).detach(),
    )


def check_f_divergence(loss_types: Sequence[str], f_divergence_type: str) -> None:
    """Refuse an f-divergence other than reverse KL with a DPO loss type that has no f-divergence form."""
    if f_divergence_type == "reverse_kl":
        return
    others = [t for t in loss_types if t not in _MARGIN_LOSS_TYPES and t != "sft"]
    if others:
        raise ValueError(
            f"f_divergence_type={f_divergence_type!r} only applies to the loss types "
            f"{sorted(_MARGIN_LOSS_TYPES | {'sft'})}; {others} work on the log-ratios themselves (the f-DPO "
            "reparameterisation cancels only in a chosen-minus-rejected margin). Use f_divergence_type='reverse_kl' "
            "with them.")


# ---------------------------------------------------------------------------
# Token-level helpers: LD-DPO and WPO
# ---------------------------------------------------------------------------


def ld_dpo_logps(
    per_token_logps: torch.Tensor,
    mask: torch.Tensor,
    public_lengths: torch.Tensor,
    ld_alpha: float,
) -> torch.Tensor:
    """LD-DPO log-prob — Liu et al. 2024, 'Length Desensitization in DPO', desensitised likelihood (length l_p).

    ``per_token_logps`` ``(N, T)``, ``mask`` ``(N, T)`` (1 on completion
    tokens, anywhere in the row: left/right padding and prompt positions are
    fine), ``public_lengths`` ``(N,)``. The first ``public_lengths[i]``
    completion tokens of row ``i`` count fully, the rest are scaled by
    ``ld_alpha``: ``Σ_front logp + ld_alpha · Σ_rear logp``. ``ld_alpha=1``
    is the plain sum; ``0`` truncates to the public length.
    """
    if per_token_logps.shape != mask.shape:
        raise ValueError(f"per_token_logps {tuple(per_token_logps.shape)} and mask {tuple(mask.shape)} differ")
    m = mask.to(per_token_logps.dtype)
    position = torch.cumsum(m, dim=-1) - 1  # index of each completion token within the completion
    front = m * (position < public_lengths.to(position.dtype).unsqueeze(-1)).to(m.dtype)
    rear = m - front
    return (per_token_logps * front).sum(-1) + ld_alpha * (per_token_logps * rear).sum(-1)


def ld_dpo_pair_logps(
    chosen_per_token_logps: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_per_token_logps: torch.Tensor,
    rejected_mask: torch.Tensor,
    ld_alpha: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """LD-DPO pair log-probs — Liu et al. 2024, 'Length Desensitization in DPO', l_p = min(|y_w|, |y_l|).

    The public length of pair ``i`` is ``min(len_chosen_i, len_rejected_i)``
    (completion tokens counted from the masks). Returns ``(chosen_logps,
    rejected_logps)`` from :func:`ld_dpo_logps`, to feed :func:`dpo_loss`.
    The DPO trainer (``ld_alpha``) applies it to the policy's and the
    reference's log-probs alike, as TRL 1.x does (TRL 0.2x kept plain sums
    for the reference), so the implicit rewards are 0 while the policy equals
    the reference.
    """
    public = torch.minimum(chosen_mask.sum(-1), rejected_mask.sum(-1))
    return (
        ld_dpo_logps(chosen_per_token_logps, chosen_mask, public, ld_alpha),
        ld_dpo_logps(rejected_per_token_logps, rejected_mask, public, ld_alpha),
    )


def log_sum_squared_probs(logits: torch.Tensor) -> torch.Tensor:
    """Per-token ``log Σ_v p_v²`` from logits ``(..., V)`` — input for WPO weights (Zhou et al. 2024, Eq. 2).

    Computed as ``logsumexp(2·log_softmax(logits))`` in float32 or wider,
    without gradient. Returns shape ``logits.shape[:-1]``.
    """
    with torch.no_grad():
        x = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
        return torch.logsumexp(2.0 * torch.log_softmax(x, dim=-1), dim=-1)


def wpo_log_weights(
    per_token_logps: torch.Tensor,
    per_token_log_sum_sq_probs: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """Log WPO sequence weight — Zhou et al. 2024, 'WPO: Enhancing RLHF with Weighted Preference Optimization', Eq. 2.

    ``log w(x, y) = (1/|y|) Σ_t [log p(y_t) - log Σ_v p(v)²]`` over the
    completion tokens (``mask`` 1): the length-normalised log-prob of each
    token relative to ``Σ_v p_v²``, the probability the policy gives to a
    token drawn from itself (WPO's on-policy normaliser). Inputs
    are ``(N, T)``: the per-token log-probs of the completion tokens and
    :func:`log_sum_squared_probs` of the same positions. Detached ``(N,)``.
    """
    with torch.no_grad():
        m = mask.to(per_token_logps.dtype)
        adjusted = (per_token_logps - per_token_log_sum_sq_probs) * m
        return adjusted.sum(-1) / m.sum(-1).clamp(min=1)


def wpo_weights(
    chosen_per_token_logps: torch.Tensor,
    chosen_log_sum_sq_probs: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_per_token_logps: torch.Tensor,
    rejected_log_sum_sq_probs: torch.Tensor,
    rejected_mask: torch.Tensor,
    *,
    max_weight: float | None = 1.0,
) -> torch.Tensor:
    """WPO pair weight w(x,y_w)·w(x,y_l) — Zhou et al. 2024, 'WPO: Enhancing RLHF with Weighted...', Eq. 2.

    Caller passes, for each side, the policy's per-token log-probs of the
    completion tokens ``(B, T)``, ``log Σ_v p_v²`` at the same positions
    (:func:`log_sum_squared_probs` of the policy logits) and the completion
    mask. Returns detached ``(B,)`` weights ``exp(log w_w + log w_l)``,
    clamped at ``max_weight`` (TRL clamps at 1; ``None`` disables), to pass
    as ``dpo_loss(..., weights=...)``.
    """
    log_w = wpo_log_weights(chosen_per_token_logps, chosen_log_sum_sq_probs, chosen_mask) + wpo_log_weights(
        rejected_per_token_logps, rejected_log_sum_sq_probs, rejected_mask
    )
    w = torch.exp(log_w)
    return w.clamp(max=max_weight) if max_weight is not None else w
